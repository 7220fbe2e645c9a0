#!/usr/bin/env python
"""`domainvlm serve` under load, judged against what the runtime does in-process.

    serve_load.py [--quick] [--device cpu|cuda] [--workdir DIR] [--output FILE]

On the shipped nano base with 4 LoRA adapters (1-step fine-tunes: real PEFT adapters), one with
a fully trained projector (which PEFT cannot batch with others), and 8 names for the memory
figure, in one run:

1. in-process: `Runtime.answer` on batches of 1, 2, 4, 8, 16 queries of one adapter (the
   best is the hardware's batched throughput), and one query at a time (latency);
2. the real server (uvicorn on 127.0.0.1) driven by a bounded load generator: 16 clients on
   one adapter, batching on and off; 1 client (latency); 16 clients on a mix of all five
   adapters; then its resident memory with the base alone and with 8 adapters loaded.

Prints JSON with the figures and the ratios the issue sets (`targets`):
server_vs_inprocess >= 0.9, batching_on_vs_off > 1, latency_c1_vs_inprocess <= 1.15,
memory_vs_budget <= 1.1, mixed_vs_single >= 0.8.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What colour is the shape?"
# Four LoRA adapters PEFT batches together, one (a fully trained projector) it cannot.
MIXED = ("lora-1@1", "lora-2@1", "lora-3@1", "lora-4@1", "proj-1@1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per load phase [default: 192, --quick 24]")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    count = args.requests or (24 if args.quick else 192)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="serve-load-"))
    work.mkdir(parents=True, exist_ok=True)
    base, store, images = prepare(work, args.quick)
    result: dict[str, Any] = {"device": args.device, "requests_per_phase": count}
    result["in_process"] = in_process(base, store, images, args.device, count)
    best = result["in_process"]["best"]
    result["server"] = served(base, store, images, work, args.device, count, best["batch"])
    result.update(ratios(result))
    text = json.dumps(result, indent=2)
    if args.output:
        from domainvlm.atomic import write_text

        write_text(args.output, text + "\n")
    print(text)


def prepare(work: Path, quick: bool) -> tuple[str, Path, list[bytes]]:
    """The nano base, a store with lora-1..4, proj-1 (not mixable) and mem-1..8, and 32
    distinct images (the vision tower is memoised by pixels: repeating one image would
    flatter every batch)."""
    from domainvlm import FinetuneConfig, finetune
    from domainvlm.adapters.store import AdapterStore
    from domainvlm.nano import ensure_nano
    from domainvlm.nano.shapes_world import write_shapes_dataset

    base = str(ensure_nano())
    data = write_shapes_dataset(work / "shapes", n_images=32, seed=0, image_size=192)
    store = AdapterStore(work / "store")
    runs = {"lora-1": [], "lora-2": [], "lora-3": [], "lora-4": [], "proj-1": ["projector"]}
    for seed, (name, fully) in enumerate(runs.items()):
        if any(card.name == name for card in store.list()):
            continue
        out = work / "runs" / name
        # vision_cache off: the one step encodes its 2 images, not every training image
        finetune(FinetuneConfig(model=base, data=str(data["train"]), output=out, max_steps=1,
                                batch_size=2, seed=seed, train_fully=fully, overwrite=True,
                                vision_cache="off"))
        store.add(out, name)
    for n in range(1, 9):
        if not any(card.name == f"mem-{n}" for card in store.list()):
            store.add(work / "runs" / "lora-1", f"mem-{n}")
    images = [path.read_bytes() for path in sorted((work / "shapes" / "images").glob("*.png"))]
    return base, work / "store", images


def in_process(base: str, store_root: Path, images: list[bytes], device: str,
               count: int) -> dict[str, Any]:
    from PIL import Image

    from domainvlm.adapters.runtime import Query, Runtime
    from domainvlm.adapters.store import AdapterStore

    runtime = Runtime(base, AdapterStore(store_root), device=device, batch_size=64)

    def queries(start: int, n: int, adapters: tuple[str, ...] = ("lora-1@1",)) -> list[Query]:
        """What the server gets: each image decoded from its PNG bytes, distinct images."""
        return [Query(images=[Image.open(io.BytesIO(images[(start + i) % len(images)]))
                              .convert("RGB")], question=QUESTION,
                      adapter=adapters[(start + i) % len(adapters)], max_new_tokens=8)
                for i in range(n)]

    runtime.answer(queries(0, 4))  # load the adapter, warm every path
    sweep = []
    for batch in (1, 2, 4, 8, 16):
        started = time.perf_counter()
        done = 0
        while done < count:
            runtime.answer(queries(done, batch))
            done += batch
        sweep.append({"batch": batch, "rps": round(done / (time.perf_counter() - started), 2)})
    single = []
    for n in range(max(10, count // 4)):
        started = time.perf_counter()
        runtime.answer(queries(n, 1))
        single.append(time.perf_counter() - started)
    best = max(sweep, key=lambda row: row["rps"])
    runtime.answer(queries(0, 5, MIXED))
    started, done = time.perf_counter(), 0
    while done < count:  # the server's mixed load, in the best batch size
        runtime.answer(queries(done, best["batch"], MIXED))
        done += best["batch"]
    mixed = round(done / (time.perf_counter() - started), 2)
    return {"sweep": sweep, "best": best, "mixed_rps": mixed,
            "p50_ms_one_at_a_time": round(statistics.median(single) * 1000, 2)}


def served(base: str, store: Path, images: list[bytes], work: Path, device: str, count: int,
           best_batch: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests" / "serve"))
    from server import running_server

    common = ["--model", base, "--store", str(store), "--device", device,
              "--max-wait-ms", "10", "--max-loaded", "16", "--rate", "1000000"]
    mixed = list(MIXED)
    out: dict[str, Any] = {}
    batch = max(best_batch, 8)
    with running_server([*common, "--max-batch", str(batch),
                         *[f"--preload={ref}" for ref in mixed]],
                        work / "data-on") as server:
        load(server.url, images, ["lora-1@1"], 4, 8)  # warm-up
        out["batching_on"] = {"max_batch": batch, **load(server.url, images, ["lora-1@1"], 16,
                                                          count)}
        out["concurrency_1"] = load(server.url, images, ["lora-1@1"], 1, max(10, count // 4))
        out["mixed"] = load(server.url, images, mixed, 16, count)
        out["memory"] = memory(server, [f"mem-{n}@1" for n in range(1, 9)], store)
    with running_server([*common, "--max-batch", "1", "--preload=lora-1@1"],
                        work / "data-off") as server:
        load(server.url, images, ["lora-1@1"], 4, 8)
        out["batching_off"] = load(server.url, images, ["lora-1@1"], 16, count)
    return out


def load(url: str, images: list[bytes], adapters: list[str], clients: int, count: int
         ) -> dict[str, Any]:
    """`count` POST /v1/vqa from `clients` threads, adapters in turn; throughput, latencies."""
    import requests

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(count))

    def client() -> None:
        with requests.Session() as http:
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                started = time.perf_counter()
                image = images[index % len(images)]
                reply = http.post(url + "/v1/vqa", files=[("image", ("i.png", image))],
                                  data={"question": QUESTION, "max_new_tokens": "8",
                                        "adapter": adapters[index % len(adapters)]},
                                  timeout=300)
                with lock:
                    latencies.append(time.perf_counter() - started)
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code}: {reply.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, first: {failures[0]}")
    ordered = sorted(latencies)
    return {"clients": clients, "requests": count, "rps": round(count / elapsed, 2),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000, 2)}


def memory(server: Any, refs: list[str], store: Path) -> dict[str, Any]:
    """Resident memory with the base alone and with 8 adapters loaded."""
    import psutil
    import requests

    from domainvlm.adapters.store import AdapterStore

    for ref in requests.get(server.url + "/v1/adapters", timeout=60).json()["loaded"]:
        requests.post(f"{server.url}/v1/adapters/{ref}/unload", timeout=60).raise_for_status()
    process = psutil.Process(server.process.pid)
    time.sleep(1.0)
    alone = process.memory_info().rss
    for ref in refs:
        requests.post(f"{server.url}/v1/adapters/{ref}/load", timeout=120).raise_for_status()
    time.sleep(1.0)
    loaded = process.memory_info().rss
    size = AdapterStore(store).card(refs[0]).size_bytes
    budget = alone + len(refs) * size
    return {"base_alone_mb": round(alone / 2**20, 1), "with_8_mb": round(loaded / 2**20, 1),
            "adapter_mb": round(size / 2**20, 2), "budget_mb": round(budget / 2**20, 1),
            "adapters": len(refs)}


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    best = result["in_process"]["best"]["rps"]
    server = result["server"]
    got = {
        "server_vs_inprocess": server["batching_on"]["rps"] / best,
        "batching_on_vs_off": server["batching_on"]["rps"] / server["batching_off"]["rps"],
        "latency_c1_vs_inprocess": server["concurrency_1"]["p50_ms"]
        / result["in_process"]["p50_ms_one_at_a_time"],
        "memory_vs_budget": server["memory"]["with_8_mb"] / server["memory"]["budget_mb"],
        "mixed_vs_single": server["mixed"]["rps"] / server["batching_on"]["rps"],
    }
    context = {  # not targets: where the bounds come from
        "inprocess_mixed_vs_single": result["in_process"]["mixed_rps"] / best,
        "server_mixed_vs_inprocess_mixed": server["mixed"]["rps"]
        / result["in_process"]["mixed_rps"],
    }
    targets = {"server_vs_inprocess": (">=", 0.9), "batching_on_vs_off": (">", 1.0),
               "latency_c1_vs_inprocess": ("<=", 1.15), "memory_vs_budget": ("<=", 1.1),
               "mixed_vs_single": (">=", 0.8)}
    met = {name: (value >= bound if op == ">=" else value > bound if op == ">"
                  else value <= bound) for name, value in got.items()
           for op, bound in [targets[name]]}
    return {"ratios": {k: round(v, 3) for k, v in got.items()},
            "context": {k: round(v, 3) for k, v in context.items()},
            "targets": {k: f"{op} {bound}" for k, (op, bound) in targets.items()},
            "met": met}


if __name__ == "__main__":
    main()
