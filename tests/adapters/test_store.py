"""The adapter store: cards checked against the files they describe (sha256 by hashlib, the
base record, the data file, eval's metrics.json), `mixable` against PEFT itself, integrity,
archives (round trip byte for byte; hostile members refused with nothing written), the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factory import make_adapter
from testkit import run_cli

from domainvlm.adapters.errors import (
    AdapterError,
    AdapterExistsError,
    AdapterIntegrityError,
    AdapterNotFound,
)
from domainvlm.adapters.store import ENV, AdapterCard, AdapterStore
from domainvlm.data.views import write_views


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): sha256(p)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Real adapters on the tiny LLaVA: two plain LoRA, a DoRA, a LoRA + full projector."""
    base, root = tiny_models("llava"), tmp_path_factory.mktemp("made")
    return {"base": base, "lora": make_adapter(base, root / "lora", seed=0),
            "lora2": make_adapter(base, root / "lora2", seed=1),
            "dora": make_adapter(base, root / "dora", kind="dora"),
            "projector": make_adapter(base, root / "projector", kind="projector")}


@pytest.fixture(scope="module")
def run(tiny_models, shapes_data, tmp_path_factory) -> dict[str, Path]:
    """A real two-step `finetune` run folder and `evaluate` output for it."""
    from domainvlm import FinetuneConfig, evaluate, finetune

    root = tmp_path_factory.mktemp("run")
    cfg = FinetuneConfig(model=str(tiny_models("llava")), data=str(shapes_data["train"]),
                         output=root / "run", max_steps=2, batch_size=4,
                         cache_dir=root / "cache")
    finetune(cfg)
    folder = shapes_data["eval"].parent
    rows = [json.loads(line) for line in shapes_data["eval"].read_text().splitlines()]
    closed = [{"image": str(folder / r["image"]), "question": r["question"],
               "answer": r["answer"]} for r in rows if r["question_type"] == "closed"][:6]
    test = root / "closed.jsonl"  # closed questions: no text metrics to start Java for
    test.write_text("".join(json.dumps(r) + "\n" for r in closed))
    evaluate(root / "run" / "adapter", test, output=root / "eval", max_new_tokens=2)
    return {"run": root / "run", "eval": root / "eval", "data": shapes_data["train"]}


# ---------------------------------------------------------------------------------------------
# Cards
# ---------------------------------------------------------------------------------------------


def test_a_finetune_run_becomes_a_card_of_what_it_holds(run, tmp_path):
    store = AdapterStore(tmp_path / "store")
    before = datetime.now(UTC).replace(microsecond=0)
    card = store.add(run["run"], "shapes", intended_use="teaching", licence="CC-BY-4.0",
                     metrics=run["eval"])
    adapter = run["run"] / "adapter"
    assert card.ref == "shapes@1" and store.path("shapes") == tmp_path / "store/shapes/1"
    assert card.files == tree(adapter)  # every file, by hashlib, nothing else
    assert tree(store.path("shapes@1")) == {**tree(adapter), "card.json": sha256(
        store.path("shapes@1") / "card.json")}
    assert card.size_bytes == sum(p.stat().st_size for p in adapter.rglob("*") if p.is_file())
    recorded = json.loads((adapter / "base_model.json").read_text())
    assert card.base == recorded and card.base["weights"]
    lines = [line for line in run["data"].read_text().splitlines() if line.strip()]
    assert card.data == {"fingerprint": sha256(run["data"]), "path": str(run["data"]),
                         "records": len(lines)}
    assert card.metrics == json.loads((run["eval"] / "metrics.json").read_text())
    assert (card.intended_use, card.licence, card.peft_type) == ("teaching", "CC-BY-4.0", "LORA")
    assert card.mixable is True and card.views is None
    assert before <= datetime.fromisoformat(card.created) <= datetime.now(UTC)
    on_disk = json.loads((store.path("shapes") / "card.json").read_text())
    assert on_disk == card.to_json() and AdapterCard.from_json(on_disk) == card
    assert store.card("shapes") == card and store.list() == [card]


def test_a_bare_adapter_folder_has_no_data_and_keeps_its_views(made, tmp_path):
    source = tmp_path / "adapter"
    shutil.copytree(made["lora"], source)
    write_views(source, {"kind": "montage", "slices": 9})
    card = AdapterStore(tmp_path / "store").add(source, "chest")
    assert card.data is None and card.metrics is None
    assert card.views == {"kind": "montage", "slices": 9}
    assert card.files == tree(source)


def test_an_adapter_without_its_base_record_is_refused(made, tmp_path):
    source = tmp_path / "adapter"
    shutil.copytree(made["lora"], source)
    (source / "base_model.json").unlink()
    with pytest.raises(AdapterError, match="base_model.json.*domainvlm finetune"):
        AdapterStore(tmp_path / "store").add(source, "chest")
    assert not (tmp_path / "store").exists()


def test_metrics_of_another_adapter_are_refused(run, made, tmp_path):
    with pytest.raises(AdapterError, match="metrics.json: these metrics are of .*run/adapter, "
                                           "whose weights differ"):
        AdapterStore(tmp_path / "store").add(made["lora"], "chest", metrics=run["eval"])
    assert not (tmp_path / "store").exists()


def test_a_missing_data_file_is_said_in_the_card(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run["run"], copy)
    record = json.loads((copy / "run.json").read_text())
    record["config"]["data"] = str(tmp_path / "gone.jsonl")
    (copy / "run.json").write_text(json.dumps(record))
    card = AdapterStore(tmp_path / "store").add(copy, "shapes")
    assert card.data == {"fingerprint": None, "path": str(tmp_path / "gone.jsonl"),
                         "records": None, "note": "not found when the adapter was added"}


def test_mixable_is_what_peft_can_batch(made, tmp_path):
    """The oracle is PEFT: a mixable adapter answers in one batch beside another adapter and
    the base exactly as it does alone; PEFT refuses to mix the others."""
    import torch
    from peft import PeftModel
    from PIL import Image

    from domainvlm.data.prompting import PromptFormat
    from domainvlm.loading import load_model

    store = AdapterStore(tmp_path / "store")
    for kind in ("lora", "lora2", "dora", "projector"):
        store.add(made[kind], kind)
    assert {c.name: c.mixable for c in store.list()} == {
        "lora": True, "lora2": True, "dora": False, "projector": False}
    image = Image.new("RGB", (64, 64), (200, 40, 40))

    def answers(model, fmt, names=None, rows=1):
        fmt.processor.tokenizer.padding_side = "left"
        inputs = fmt.processor(**fmt.processor_inputs([fmt.prompt("Colour?", 1)] * rows,
                                                      [[image]] * rows),
                               padding=True, return_tensors="pt")
        extra = {"adapter_names": names} if names else {}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False, **extra,
                                 pad_token_id=fmt.processor.tokenizer.pad_token_id)
        return out[:, inputs["input_ids"].shape[1]:].tolist()

    for other in ("lora2", "dora", "projector"):
        loaded = load_model(str(made["base"]), dtype="float32")
        fmt = PromptFormat.from_processor(loaded.processor, loaded.family)
        model = PeftModel.from_pretrained(loaded.model, str(store.path("lora")),
                                          adapter_name="lora").eval()
        model.load_adapter(str(store.path(other)), adapter_name=other)
        if not store.card(other).mixable:
            with pytest.raises((ValueError, TypeError), match="DoRA|Mixed batching"):
                answers(model, fmt, ["lora", other], rows=2)
            continue
        mixed = answers(model, fmt, ["lora", other, "__base__"], rows=3)
        alone = []
        for name in ("lora", other):
            model.set_adapter(name)
            alone += answers(model, fmt)
        with model.disable_adapter():
            alone += answers(model, fmt)
        assert mixed == alone and len({tuple(a) for a in alone}) == 3  # each changes answers


# ---------------------------------------------------------------------------------------------
# Names, versions, integrity
# ---------------------------------------------------------------------------------------------


def test_versions_count_up_and_the_latest_is_by_number(made, tmp_path):
    store = AdapterStore(tmp_path / "store")
    assert [store.add(made["lora"], "chest").version for _ in range(2)] == ["1", "2"]
    store.add(made["lora"], "chest", version="10")
    assert store.card("chest").version == "10"  # not "2", as text would have it
    assert store.add(made["lora"], "chest").version == "11"
    store.add(made["lora"], "chest", version="2026-12a")
    assert [c.version for c in store.list()] == ["1", "2", "10", "11", "2026-12a"]
    assert store.card("chest@2").version == "2"
    with pytest.raises(AdapterExistsError, match="chest@2 is already in the store"):
        store.add(made["lora2"], "chest", version="2")
    assert store.path("chest@2")  # still the first adapter, unchanged (verified)
    with pytest.raises(AdapterNotFound, match=r"no adapter chest@3 .*chest@1, chest@2, chest@10"):
        store.card("chest@3")


@pytest.mark.parametrize("ref", ["Chest", "../chest", "a/b", "base", "", ".hidden", "x" * 65,
                                 "chest@", "chest@../1", "chest@V1"])
def test_unsafe_names_are_refused_before_anything_is_written(made, tmp_path, ref):
    store = AdapterStore(tmp_path / "store")
    name, _, version = ref.partition("@")
    with pytest.raises(AdapterError, match="name|version"):
        store.add(made["lora"], name, version=version if "@" in ref else None)
    with pytest.raises(AdapterError, match="name|version"):
        store.card(ref)
    assert not (tmp_path / "store").exists()


def test_a_changed_missing_or_added_file_is_named(made, tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.add(made["lora"], "chest")
    folder = store.path("chest@1")
    weights = folder / "adapter_model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(AdapterIntegrityError,
                       match=r"file adapter_model.safetensors was changed") as caught:
        store.path("chest")
    assert "\\x" not in str(caught.value) and len(str(caught.value)) < 200  # no content
    assert store.path("chest", verify=False) == folder
    weights.write_bytes(original)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(AdapterIntegrityError, match="file tokenizer.json is missing"):
        store.path("chest")
    shutil.copyfile(made["lora"] / "tokenizer.json", folder / "tokenizer.json")
    (folder / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(AdapterIntegrityError, match="file adapter_model.bin was added"):
        store.path("chest")
    (folder / "adapter_model.bin").unlink()
    assert store.path("chest") == folder


def test_remove_takes_one_named_version(made, tmp_path):
    store = AdapterStore(tmp_path / "store")
    store.add(made["lora"], "chest")
    store.add(made["lora"], "chest")
    with pytest.raises(AdapterError, match=r"name the version to remove \(chest@1, chest@2\)"):
        store.remove("chest")
    assert store.remove("chest@2").ref == "chest@2"
    assert [c.ref for c in store.list()] == ["chest@1"]
    store.remove("chest@1")
    assert store.list() == [] and list((tmp_path / "store").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------------------------


def test_export_then_import_gives_the_same_cards_byte_for_byte(made, tmp_path):
    first = AdapterStore(tmp_path / "first")
    for kind in ("lora", "dora", "projector"):
        first.add(made[kind], kind, licence="internal")
    archive = first.export(tmp_path / "all.tar")
    second = AdapterStore(tmp_path / "second")
    assert [c.ref for c in second.import_archive(archive)] == ["dora@1", "lora@1",
                                                              "projector@1"]
    for ref in ("dora/1", "lora/1", "projector/1"):
        assert tree(tmp_path / "second" / ref) == tree(tmp_path / "first" / ref)
    assert second.list() == first.list()
    assert second.import_archive(archive) == []  # the same content again: nothing to do
    assert first.export(tmp_path / "again.tar").read_bytes() == archive.read_bytes()
    one = first.export(tmp_path / "one.tar", ["lora"])
    with tarfile.open(one) as tar:
        assert {m.name.split("/")[0] for m in tar.getmembers()} == {"adapters.json", "lora"}


def test_a_folder_of_other_files_is_no_store_and_an_archive_is_not_replaced(made, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    with pytest.raises(AdapterError, match=r"mine holds files that are not adapters \(notes"):
        AdapterStore(mine).add(made["lora"], "chest")
    store = AdapterStore(tmp_path / "store")
    store.add(made["lora"], "chest")
    archive = store.export(tmp_path / "chest.tar")
    with pytest.raises(AdapterError, match="holds files that are not adapters"):
        AdapterStore(mine).import_archive(archive)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    (tmp_path / "chest.tar").write_text("the user's file")
    with pytest.raises(AdapterExistsError, match="chest.tar already exists; pass --overwrite"):
        store.export(archive)
    assert archive.read_text() == "the user's file"
    assert tarfile.is_tarfile(store.export(archive, overwrite=True))
    with pytest.raises(AdapterError, match="is inside the store"):
        store.export(tmp_path / "store" / "chest.tar")
    assert [c.ref for c in store.list()] == ["chest@1"] and store.path("chest")


def test_an_existing_version_with_other_content_needs_overwrite(made, tmp_path):
    first, second = AdapterStore(tmp_path / "first"), AdapterStore(tmp_path / "second")
    first.add(made["lora"], "chest")
    second.add(made["lora2"], "chest")
    archive = first.export(tmp_path / "chest.tar")
    before = tree(tmp_path / "second")
    with pytest.raises(AdapterExistsError, match="chest@1.*--overwrite"):
        second.import_archive(archive)
    assert tree(tmp_path / "second") == before
    assert [c.ref for c in second.import_archive(archive, overwrite=True)] == ["chest@1"]
    assert tree(tmp_path / "second") == tree(tmp_path / "first")


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def _file(name: str, data: bytes = b"{}") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


HOSTILE = {
    "parent": lambda: _file("../escape.txt"),
    "inner-parent": lambda: _file("chest/1/../../../escape.txt"),
    "absolute": lambda: _file("/tmp/domainvlm-store-abs.txt"),
    "symlink": lambda: _special("chest/1/tokenizer.json", tarfile.SYMTYPE, "/etc/passwd"),
    "hardlink": lambda: _special("chest/1/tokenizer.json", tarfile.LNKTYPE, "../../escape.txt"),
    "device": lambda: _special("chest/1/dev", tarfile.CHRTYPE),
}


@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_a_hostile_archive_is_refused_with_nothing_written(made, tmp_path, hostile):
    good = AdapterStore(tmp_path / "good")
    good.add(made["lora"], "chest")
    with tarfile.open(good.export(tmp_path / "good.tar")) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    (tmp_path / "bad").mkdir()
    archive = _archive(tmp_path / "bad" / "bad.tar", [*members, HOSTILE[hostile]()])
    with pytest.raises(AdapterError, match="refused, nothing imported"):
        AdapterStore(tmp_path / "bad" / "store").import_archive(archive)
    assert sorted(p.name for p in (tmp_path / "bad").iterdir()) == ["bad.tar"]
    assert not Path("/tmp/domainvlm-store-abs.txt").exists()


def test_a_changed_file_in_an_archive_is_named_and_nothing_imported(made, tmp_path):
    good = AdapterStore(tmp_path / "good")
    good.add(made["lora"], "chest")
    good.add(made["dora"], "dora")
    with tarfile.open(good.export(tmp_path / "good.tar")) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = [(m, data + b" " if m.name == "dora/1/adapter_config.json" else data)
               for m, data in members]
    archive = _archive(tmp_path / "changed.tar", members)
    target = AdapterStore(tmp_path / "target")
    with pytest.raises(AdapterIntegrityError, match="dora@1 .*file adapter_config.json was "
                                                    "changed"):
        target.import_archive(archive)
    assert not (tmp_path / "target").exists()  # chest@1 was fine, and is not there either
    outside = next(m for m in members if m[0].name == "chest/1/card.json")
    card = json.loads(outside[1])
    card["files"]["../../outside.txt"] = card["files"]["README.md"]
    members = [(m, json.dumps(card).encode() if m is outside[0] else data)
               for m, data in members if not m.name.startswith("dora/")]
    members[0] = (members[0][0], json.dumps({"format": "domainvlm-adapters",
                                             "adapters": ["chest@1"]}).encode())
    (tmp_path / "outside.txt").write_bytes((made["lora"] / "README.md").read_bytes())
    with pytest.raises(AdapterIntegrityError, match="files must be paths inside the adapter"):
        target.import_archive(_archive(tmp_path / "outside.tar", members))
    assert not (tmp_path / "target").exists()
    with pytest.raises(AdapterError, match="not an adapter archive"):
        target.import_archive(_archive(tmp_path / "plain.tar", [_file("chest/1/card.json")]))
    (tmp_path / "text.tar").write_text("not a tar")
    with pytest.raises(AdapterError, match="not a tar archive"):
        target.import_archive(tmp_path / "text.tar")


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------


def test_cli_add_list_show_export_import_rm(run, made, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, monkeypatch, "adapters", "add", run["run"], "shapes",
                             "--licence", "CC-BY-4.0", "--metrics", run["eval"],
                             "--store", store)
    assert code == 0 and out == f"wrote {store / 'shapes' / '1'} (shapes@1)\n", err
    monkeypatch.setenv(ENV, str(store))  # the default store from here on
    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "add", made["projector"], "proj")
    assert code == 0 and out.splitlines() == [
        "note: proj@1 is answered in batches of its own: it trains "
        "model.multi_modal_projector in full (modules_to_save)",
        f"wrote {store / 'proj' / '1'} (proj@1)"]
    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "add", made["dora"], "dora")
    assert code == 0 and out.splitlines()[0] == ("note: dora@1 is answered in batches of its "
                                                 "own: a DoRA adapter (PEFT cannot batch DoRA "
                                                 "with other adapters)")
    run_cli(capsys, monkeypatch, "adapters", "rm", "dora@1")

    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "list")
    cards = {c.ref: c for c in AdapterStore(store).list()}
    accuracy = cards["shapes@1"].metrics["vqa"]["accuracy"]
    header, *rows = out.splitlines()
    assert code == 0 and header.split() == ["ADAPTER", "BASE", "CREATED", "METRICS", "MIXABLE"]
    assert rows[0].split()[:3] == ["proj@1", cards["proj@1"].base["source"],
                                   cards["proj@1"].created] and rows[0].endswith(" no")
    assert f"vqa accuracy {accuracy:.3f} (n=6)" in rows[1] and rows[1].endswith(" yes")
    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "list", "--json")
    assert json.loads(out) == [cards["proj@1"].to_json(), cards["shapes@1"].to_json()]
    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "show", "shapes")
    assert code == 0 and json.loads(out) == cards["shapes@1"].to_json()

    archive = tmp_path / "out" / "both.tar"
    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "export", archive)
    assert code == 0 and out == f"wrote {archive}\n"
    other = tmp_path / "other"
    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "import", archive, "--store", other)
    assert code == 0 and out.splitlines() == [f"wrote {other / 'proj' / '1'} (proj@1)",
                                              f"wrote {other / 'shapes' / '1'} (shapes@1)"]
    assert (other / "shapes/1/card.json").read_bytes() == (store / "shapes/1/card.json"
                                                          ).read_bytes()
    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "import", archive, "--store", other)
    assert code == 0 and out == ("unchanged (already in the store with the same content): "
                                 "proj@1, shapes@1\n")

    code, out, _ = run_cli(capsys, monkeypatch, "adapters", "rm", "proj@1")
    assert code == 0 and out == f"removed proj@1 from {store}\n"
    assert [c.ref for c in AdapterStore(store).list()] == ["shapes@1"]


def test_cli_bad_input_is_one_error_line(made, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv(ENV, str(store))
    assert run_cli(capsys, monkeypatch, "adapters", "add", made["lora"], "chest")[0] == 0

    def fails(*args: object) -> str:
        code, out, err = run_cli(capsys, monkeypatch, "adapters", *args)
        assert code == 2 and out == "" and err.count("\n") == 1, (code, out, err)
        return err

    assert fails("show", "nope") == (f"error: no adapter nope in the store {store}; "
                                     "it holds chest@1\n")
    assert "use 1-64 lower-case" in fails("add", made["lora"], "Chest")
    assert "chest@1 is already in the store" in fails("add", made["lora"], "chest",
                                                      "--version", "1")
    assert "neither a finetune run folder" in fails("add", tmp_path, "other")
    assert "no metrics.json" in fails("add", made["lora"], "other", "--metrics", tmp_path)
    (store / "chest/1/adapter_config.json").write_text("{}")
    assert "file adapter_config.json was changed" in fails("export", tmp_path / "x.tar")
    assert not (tmp_path / "x.tar").exists()
    assert "name the version to remove" in fails("rm", "chest")
    assert "not a tar archive" in fails("import", made["lora"] / "tokenizer.json")
    assert [p.name for p in store.iterdir()] == ["chest"]
