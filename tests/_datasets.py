"""Writers of tiny dataset trees in each source's exact layout, for the importer tests.

Each ``make_*_tree(root)`` writes 32x32-pixel CT (DICOM via ``ich.dicom.write_series``, NIfTI
via nibabel) with the quirks of data-formats.md §7 and returns a dict of what it wrote, so
tests can check the import against the truth. Not a test module (no ``test_`` prefix).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from ich.dicom import write_series
from ich.labels import SUBTYPES

PX = 32
SECRET_NAME = "Doe^Jane"          # identifying values planted in fixtures: must never reach a dataset
SECRET_ID = "MRN-SECRET-4711"
SECRET_BIRTH = "19450317"


def head_volume(n: int, *, size: int = PX, seed: int = 0, lesion_slices=()) -> tuple[np.ndarray, np.ndarray]:
    """A tiny head-like HU volume (air, skull ring, brain) and a lesion mask (codes) on ``lesion_slices``.

    Returns (hu (n, size, size) float32 integers, mask (n, size, size) uint8 with code 2 = intraparenchymal).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    hu = np.full((n, size, size), -1000.0, dtype=np.float32)
    hu[:, r < size * 0.45] = 1000.0
    hu[:, r < size * 0.38] = 30.0
    hu += rng.integers(-5, 6, size=hu.shape)
    hu += np.arange(n, dtype=np.float32)[:, None, None]  # slices differ, so order can be checked
    mask = np.zeros(hu.shape, dtype=np.uint8)
    for s in lesion_slices:
        sl = (slice(s, s + 1), slice(size // 3, size // 2), slice(size // 3, size // 2))
        hu[sl] = 70.0
        mask[sl] = 2
    # >= -1000 HU: the range in which the RSNA 12-bit fix is invertible (fixtures reuse these volumes)
    return np.maximum(np.rint(hu), -1000).astype(np.float32), mask


def edit(path: str | os.PathLike, **tags) -> None:
    """Change (or delete, with value None) top-level tags of a DICOM file in place."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # RSNA-style "ID_..." UIDs are invalid by design
        ds = pydicom.dcmread(path)
        for k, v in tags.items():
            if v is None:
                if k in ds:
                    delattr(ds, k)
            else:
                setattr(ds, k, v)
        ds.save_as(path, enforce_file_format=True)


def plant_identity(path: str | os.PathLike) -> None:
    edit(path, PatientName=SECRET_NAME, PatientID=SECRET_ID, PatientBirthDate=SECRET_BIRTH,
         AccessionNumber="ACC-SECRET-99", InstitutionName="Secret General Hospital")


def truncate_pixels(path: str | os.PathLike) -> None:
    """Make the file like RSNA's ID_6431af929.dcm: a consistent header whose PixelData is too short."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(path)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 * 2 // 2 * 2]
        ds.save_as(path, enforce_file_format=True)


def to_jpeg_lossless(path: str | os.PathLike) -> None:
    """Re-encode a file in place as JPEG Lossless SV1 (1.2.840.10008.1.2.4.70) with python-gdcm."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"gdcm could not read {path}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"gdcm could not compress {path}")
    writer = gdcm.ImageWriter()
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    writer.SetFileName(str(tmp))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"gdcm could not write {tmp}")
    os.replace(tmp, path)


def rsna_rows(image_id: str, labels: dict[str, int]) -> list[dict]:
    """The six CSV rows of one image (subtypes in RSNA order, then any)."""
    return [{"ID": f"{image_id}_{s}", "Label": int(labels.get(s, 0))} for s in (*SUBTYPES, "any")]


# --------------------------------------------------------------------------- RSNA

def _quiet(fn):
    """Silence pydicom's warnings about RSNA-style UIDs (``ID_<hex>`` is not a valid UID, by design)."""
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return fn(*args, **kwargs)
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_quiet
def make_rsna_tree(root: Path) -> dict:
    """RSNA stage-2 layout: stage_2_train.csv + stage_2_train/ID_<hex>.dcm.

    3 patients, 4 series of 6 slices (patient P0 has two series). Quirks: file names and
    InstanceNumbers that do not follow anatomy, one 12-bit-bug slice, a multi-valued
    WindowCenter, a duplicated 6-row CSV block, one corrupt file (short PixelData), one
    DICOM file missing from the CSV, and CSV rows for an image that has no file.
    """
    root = Path(root)
    images = root / "stage_2_train"
    rng = np.random.default_rng(1)
    rows, truth = [], {}
    series_spec = [("P0", 0, [2, 3]), ("P0", 1, []), ("P1", 2, [4]), ("P2", 3, [])]
    for pid, k, lesion in series_spec:
        hu, _ = head_volume(6, seed=k, lesion_slices=lesion)
        ids = [f"ID_{rng.integers(0, 16**9):09x}" for _ in range(6)]
        write_series(hu, images, patient_id=f"ID_{pid.lower()}patient", series_key=f"rsna{k}",
                     sop_uids=ids, file_names=[f"{i}.dcm" for i in ids])
        series_uid = f"ID_{k:02d}series{k}"
        order = rng.permutation(6)  # instance numbers that do not follow anatomy
        for j, sop in enumerate(ids):
            edit(images / f"{sop}.dcm", SeriesInstanceUID=series_uid, StudyInstanceUID=f"ID_study{pid}",
                 InstanceNumber=int(order[j]) + 1)
            lab = {"intraparenchymal": 1, "any": 1} if j in lesion else {}
            rows += rsna_rows(sop, lab)
        truth[series_uid] = {"patient": pid, "sops": ids, "hu": hu, "positive": lesion}
    s0 = truth["ID_00series0"]
    # 12-bit bug on slice 1 of series 0: stored = HU mod 4096 with intercept 0 (the fix restores HU)
    p = images / f"{s0['sops'][1]}.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(p)
        ds.PixelData = np.mod(s0["hu"][1].astype(np.int64), 4096).astype(np.uint16).tobytes()
        ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 12, 11, 0
        ds.save_as(p, enforce_file_format=True)
    # multi-valued window tags on slice 2
    edit(images / f"{s0['sops'][2]}.dcm", WindowCenter=[40, 80], WindowWidth=[80, 200])
    # corrupt: series 2 slice 5 has short PixelData
    corrupt = truth["ID_02series2"]["sops"][5]
    truncate_pixels(images / f"{corrupt}.dcm")
    # a DICOM file that the CSV does not list
    extra_hu, _ = head_volume(1, seed=9)
    write_series(extra_hu, images, patient_id="ID_p9", series_key="rsna-extra", sop_uids=["ID_00000e0e0"],
                 file_names=["ID_00000e0e0.dcm"])
    # duplicated 6-row block, and an image without a file
    rows += rows[6:12]
    rows += rsna_rows("ID_0000ff0ff", {"subdural": 1, "any": 1})
    pd.DataFrame(rows).to_csv(root / "stage_2_train.csv", index=False)
    return {"series": truth, "corrupt": corrupt, "twelve_bit": s0["sops"][1], "extra": "ID_00000e0e0"}


# --------------------------------------------------------------------------- CQ500 + BHX

CQ500_FINDINGS = ("ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right",
                  "ChronicBleed", "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift")


def make_cq500_tree(root: Path, *, compress: bool = True) -> dict:
    """CQ500 layout: reads.csv + 'CQ500CT<n> CQ500CT<n>/Unknown Study/<series dir>/CT<k>.dcm'.

    Exams 3, 7 and 12. Each has a thick plain series 'CT 5mm' (12 slices, kept by the
    reference rule) and exam 3 also 'CT PLAIN THIN' (0.625 mm, dropped) and 'CT PRE CONTRAST 5mm'
    (dropped). Readers: exam 3 positive 3/3 (IPH 2/3), exam 7 positive 2/3 (SDH 2/3), exam 12
    negative (1/3 says ICH). Exam 3's thick series is JPEG-lossless compressed when ``compress``.
    Also writes bhx.csv: boxes on exam 3 (Intraparenchymal, and Chronic overlapping) and exam 7
    (Subdural), plus one box on a thin-series image (unmatched after selection).
    """
    root = Path(root)
    readers = {3: ([1, 1, 1], {"IPH": [1, 1, 0]}), 7: ([1, 0, 1], {"SDH": [0, 1, 1]}), 12: ([0, 1, 0], {})}
    out, sops = {}, {}
    for n in readers:
        exam_dir = root / f"CQ500CT{n} CQ500CT{n}" / "Unknown Study"
        specs = [("CT 5mm", 12, 5.0)]
        if n == 3:
            specs += [("CT PLAIN THIN", 12, 0.625), ("CT PRE CONTRAST 5mm", 12, 5.0)]
        for j, (name, k, thick) in enumerate(specs):
            hu, _ = head_volume(k, seed=n * 10 + j)
            ids = write_series(hu, exam_dir / name, patient_id=f"CQ500-CT-{n}", series_key=f"cq{n}-{j}",
                               spacing_mm=(thick, 0.45, 0.45), file_names=[f"CT{i:06d}.dcm" for i in range(k)],
                               series_description=name)
            sops[(n, name)] = ids
            out[(n, name)] = hu
            if compress and n == 3 and name == "CT 5mm":
                for i in range(k):
                    to_jpeg_lossless(exam_dir / name / f"CT{i:06d}.dcm")
    rows = []
    for n, (ich, subs) in readers.items():
        row = {"name": f"CQ500-CT-{n}", "Category": "B1"}
        for r in range(3):
            for f in CQ500_FINDINGS:
                v = ich[r] if f == "ICH" else subs.get(f, [0, 0, 0])[r]
                row[f"R{r + 1}:{f}"] = v
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "reads.csv", index=False)
    boxes = [
        (sops[(3, "CT 5mm")][4], "{'x': 8.4, 'y': 10.0, 'width': 10.2, 'height': 6.0}", "Intraparenchymal"),
        (sops[(3, "CT 5mm")][4], "{'x': 12, 'y': 12, 'width': 3, 'height': 3}", "Chronic"),
        (sops[(3, "CT 5mm")][5], "{'x': 30.0, 'y': 30.0, 'width': 10.0, 'height': 10.0}", "Intraparenchymal"),
        (sops[(7, "CT 5mm")][6], "{'x': 2, 'y': 3, 'width': 5, 'height': 20}", "Subdural"),
        (sops[(3, "CT PLAIN THIN")][2], "{'x': 2, 'y': 3, 'width': 5, 'height': 5}", "Subdural"),
    ]
    bhx = pd.DataFrame({"SOPInstanceUID": [b[0] for b in boxes], "SeriesInstanceUID": "x", "StudyInstanceUID": "y",
                        "data": [b[1] for b in boxes], "labelName": [b[2] for b in boxes],
                        "labelType": "Mask"})
    bhx.to_csv(root / "bhx.csv")  # keeps the leading index column, as the BHX files have
    return {"hu": out, "sops": sops}


# --------------------------------------------------------------------------- CT-ICH

CTICH_PATIENTS = {49: (5, [1, 2]), 50: (4, []), 66: (6, [3])}  # id -> (slices, positive slice indices)


def make_ctich_tree(root: Path) -> dict:
    """CT-ICH v1.3.1 layout: ct_scans/NNN.nii, masks/NNN.nii (binary, axes (W, H, S)), the raw-CT CSV.

    Patients 049, 050, 066 (59-65 missing, as in the real data); the CSV also lists patient 59
    (no volume). Patient 049 slice 2 is marked Intraparenchymal + Subdural (ambiguous mask code),
    patient 049's other slices Intraparenchymal; patient 066 slice 3 Epidural.
    """
    import nibabel as nib

    root = Path(root)
    (root / "ct_scans").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, truth = [], {}
    for pid, (n, positive) in CTICH_PATIENTS.items():
        hu, mask = head_volume(n, seed=pid, lesion_slices=positive)
        binary = (mask > 0).astype(np.uint8)
        for arr, folder, dtype in ((hu, "ct_scans", np.int16), (binary, "masks", np.uint8)):
            img = nib.Nifti1Image(np.transpose(arr, (2, 1, 0)).astype(dtype), np.diag([0.42, 0.43, 5.0, 1.0]))
            nib.save(img, str(root / folder / f"{pid:03d}.nii"))
        for s in range(n):
            sub = {"Intraventricular": 0, "Intraparenchymal": 0, "Subarachnoid": 0, "Epidural": 0, "Subdural": 0}
            if s in positive:
                sub["Epidural" if pid == 66 else "Intraparenchymal"] = 1
                if pid == 49 and s == 2:
                    sub["Subdural"] = 1
            rows.append({"PatientNumber": pid, "SliceNumber": s + 1, **sub,
                         "No_Hemorrhage": int(s not in positive), "Fracture_Yes_No": 0})
        truth[pid] = {"hu": hu, "mask": binary, "positive": positive}
    rows.append({"PatientNumber": 59, "SliceNumber": 1, "Intraventricular": 0, "Intraparenchymal": 0,
                 "Subarachnoid": 0, "Epidural": 0, "Subdural": 0, "No_Hemorrhage": 1, "Fracture_Yes_No": 0})
    pd.DataFrame(rows).to_csv(root / "hemorrhage_diagnosis_raw_ct.csv", index=False)
    return truth


# --------------------------------------------------------------------------- phantom

def make_phantom_tree(root: Path, n_exams: int = 3) -> dict:
    """The ich.phantom layout (synth.json, labels.csv, exams/<id>/*.dcm, masks/<id>.nii.gz as (W, H, S))."""
    import nibabel as nib

    root = Path(root)
    rows, truth = [], {}
    for k in range(n_exams):
        exam_id = f"PH{k:04d}"
        lesion = [1, 2] if k % 2 == 0 else []
        hu, mask = head_volume(5, seed=100 + k, lesion_slices=lesion)
        if k == 0:
            mask[2][mask[2] > 0] = 5  # a subdural code on slice 2
        sops = write_series(hu, root / "exams" / exam_id, patient_id=f"PHANTOM-{k}", series_key=f"ph{k}")
        for i, sop in enumerate(sops):
            lab = {}
            for code in np.unique(mask[i][mask[i] > 0]):
                lab[SUBTYPES[code - 1]] = 1
                lab["any"] = 1
            rows += rsna_rows(sop, lab)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(np.transpose(mask, (2, 1, 0)), np.eye(4)), str(root / "masks" / f"{exam_id}.nii.gz"))
        (root / "params").mkdir(exist_ok=True)
        (root / "params" / f"{exam_id}.json").write_text(json.dumps({"seed": k}))
        truth[exam_id] = {"hu": hu, "mask": mask, "sops": sops}
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    (root / "synth.json").write_text(json.dumps({"generator": "ich.phantom", "version": 1, "seed": 0,
                                                 "exams": n_exams, "size": PX, "difficulty": "easy", "config": {}}))
    return truth


# --------------------------------------------------------------------------- folder

def make_folder_tree(root: Path) -> dict:
    """A clinical-style tree: two CT series in separate folders, two CT series sharing one folder,
    an MR series (non-CT), a README and a DICOMDIR-like non-image file."""
    root = Path(root)
    truth = {}
    for name, key, n in (("patA/head", "fa", 4), ("patB/head", "fb", 5)):
        hu, _ = head_volume(n, seed=len(key) + n)
        truth[name] = {"hu": hu, "sops": write_series(hu, root / name, patient_id=f"pat-{key}", series_key=key)}
    for key in ("mix1", "mix2"):
        hu, _ = head_volume(3, seed=7)
        truth[f"patC/mixed/{key}"] = {"hu": hu, "sops": write_series(hu, root / "patC" / "mixed",
                                                                   patient_id="pat-c", series_key=key)}
    mr, _ = head_volume(3, seed=8)
    mr_sops = write_series(mr, root / "patD" / "mr", patient_id="pat-d", series_key="mr")
    for s in mr_sops:
        edit(root / "patD" / "mr" / f"{s}.dcm", Modality="MR")
    (root / "README.txt").write_text("not DICOM")
    (root / "patA" / "notes.json").write_text("{}")
    return truth


def write_decode_bomb(path: str | os.PathLike, rows: int = 60000, cols: int = 60000) -> Path:
    """A real CT slice (pydicom.examples.ct) re-saved RLE Lossless whose header claims ``rows`` x ``cols``.

    The file is ~27 KB; a decoder trusting its header allocates rows * cols * 2 bytes (7.2 GB for 60000²).
    """
    import copy

    import pydicom.examples
    from pydicom.uid import RLELossless

    ds = copy.deepcopy(pydicom.examples.ct)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.Rows, ds.Columns = rows, cols
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


_MEASURE = """
import json, resource, subprocess, sys
limit = int(sys.argv[1])
def cap():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
p = subprocess.run([sys.executable, "-c", sys.argv[2]], preexec_fn=cap, capture_output=True, text=True,
                   timeout=float(sys.argv[3]))
print(json.dumps({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_measured(code: str, *, address_space: int = 4 << 30, timeout: float = 120.0, env: dict | None = None) -> dict:
    """Run ``python -c code`` in a fresh grandchild capped at ``address_space`` bytes of virtual memory.

    The middle process reads ``getrusage(RUSAGE_CHILDREN)`` after the grandchild ends, so the peak RSS
    is that one process's (not the largest child pytest ever had). The cap keeps a failing (old) code
    path from taking the shared machine's memory: it then dies with MemoryError instead.

    Returns {"rc", "stdout", "stderr", "max_rss_mb"}.
    """
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(address_space), code, str(timeout)],
                         capture_output=True, text=True, cwd=root, timeout=timeout + 30,
                         env={**os.environ, "PYTHONPATH": str(root), **(env or {})})
    return json.loads(out.stdout)
