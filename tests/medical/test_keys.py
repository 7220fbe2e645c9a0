"""The project key: weak keys refused, keygen's files strong and private, the demo's exemption
bound to synthetic data."""

from __future__ import annotations

import stat

import pytest
from pydicom.data import get_testdata_file

from domainvlm.errors import ConfigError
from domainvlm.medical.cohort import write_cohort
from domainvlm.medical.deid import DeidConfig, deidentify, pseudonym
from domainvlm.medical.demo import DEMO_KEY
from domainvlm.medical.errors import DicomError
from domainvlm.medical.io import iter_dicom
from domainvlm.medical.keys import generate_key, read_key_file, write_key_file


@pytest.mark.parametrize(("key", "message"), [
    ("", "project_key is empty"),
    ("change-me", "well-known example value"),
    ("CHANGE_ME", "well-known example value"),
    ("password", "well-known example value"),
    ("secret", "well-known example value"),
    ("Secret!", "well-known example value"),
    (DEMO_KEY, "well-known example value"),
    ("changeme" * 5, "well-known example value"),  # 40 characters, still the example
    ("hospital-2026-study", "19 characters long, too short"),
    ("x" * 31 + "y", "distinct characters"),
    ("aB3$eF7!kM9#" * 3, "repeats one short piece"),
])
def test_weak_keys_are_refused_without_echoing_them(key, message):
    with pytest.raises(ConfigError, match="project_key") as caught:
        DeidConfig(project_key=key)
    assert message in str(caught.value) and "domainvlm dicom keygen" in str(caught.value)
    assert not key or key not in str(caught.value)


def test_a_generated_key_is_accepted_and_never_shown_in_repr():
    key = generate_key()
    assert len(key) == 43 and generate_key() != key
    config = DeidConfig(project_key=key)
    assert key not in repr(config)


def test_keygen_writes_a_private_file_once(tmp_path):
    path = write_key_file(tmp_path / "project.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = read_key_file(path)
    DeidConfig(project_key=key)
    with pytest.raises(ConfigError, match="already exists"):
        write_key_file(path)
    assert read_key_file(path) == key and sorted(tmp_path.iterdir()) == [path]
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_key_file(path)


def test_the_demo_key_works_on_synthetic_patients_only(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", 1, seed=1, shape=(4, 32, 32))
    config = DeidConfig(project_key=DEMO_KEY, synthetic_only=True)
    synthetic = next(iter_dicom(manifest.folder)).dataset
    out = deidentify(synthetic, config)
    assert out.PatientID == pseudonym(f"id:{synthetic.PatientID}", DEMO_KEY)
    real = iter_dicom(get_testdata_file("CT_small.dcm"))
    with pytest.raises(DicomError, match="not from the synthetic cohort"):
        deidentify(next(real).dataset, config)
    relabelled = synthetic.copy()
    relabelled.Manufacturer = "ACME"  # a real scanner's data with the cohort's look
    with pytest.raises(DicomError, match="synthetic patients only"):
        deidentify(relabelled, config)
