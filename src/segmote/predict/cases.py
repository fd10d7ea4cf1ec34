"""The cases of an input folder, nnU-Net style, and the prompts file that goes with them.

A folder of cases holds one image per case, ``CASE_0000.nii.gz`` (nnU-Net's channel suffix;
``CASE.nii.gz`` without one also works), in any format segmote reads, and/or one subfolder per
case holding a DICOM series. A folder whose loose files are all DICOM is one DICOM series, not a
folder of cases (that is how ``read_image`` has always read it). The label map of a case is
``OUT_DIR/CASE<ending>`` like nnU-Net's predictions: the input's ending for volumes (DICOM ->
.nii.gz), .png for 2-D images, or the ending asked for.

Prompts per case come from a JSON file (box and point numbers as on the command line)::

    {"case_a": {"boxes": [[83, 93, 0, 173, 162, 14]], "text": ["tumour"]},
     "case_b": {"points": [[120, 80, 7], [100, 60, 7, 0]], "labels": [2]},
     "case_c": {"text": ["Hippocampus_L", "Hippocampus_R"]}}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from segmote.errors import InputError, ParameterError
from segmote.io.image import READ_FORMATS, split_ext
from segmote.io.writers import default_label_ending
from segmote.predict.prompts import PromptNumbers, parse_numbers

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_DICOM_ENDINGS = {e for e, fmt in READ_FORMATS.items() if fmt == "dicom"}
_VOLUME_FORMATS = {"nifti", "nrrd", "mha", "dicom"}


@dataclass(frozen=True)
class Case:
    """name: the case identifier (file name without channel suffix and ending); path: its
    image (the requested channel) or DICOM series folder; ending: the input's file ending
    ('' for a DICOM folder)."""

    name: str
    path: Path
    ending: str

    def output(self, out_dir: Path, ending: str | None = None) -> Path:
        """``out_dir/CASE<ending>``; by default the label ending of the input's family."""
        if ending is None:
            fmt = READ_FORMATS.get(self.ending, "dicom")
            ending = default_label_ending(fmt, fmt in _VOLUME_FORMATS)
        return Path(out_dir) / f"{self.name}{ending}"


@dataclass
class CasePrompts:
    """One case's prompts: boxes, points and label values (read as a volume's or a 2-D
    image's once the image is known), and class names (one beside boxes / points; alone, the
    classes to segment without prompts)."""

    numbers: PromptNumbers = field(default_factory=PromptNumbers)
    text: list[str] = field(default_factory=list)


def is_case_folder(path: str | Path) -> bool:
    """True for a folder of cases, False for a file or a folder holding one DICOM series."""
    path = Path(path)
    if not path.is_dir():
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    loose = [p for p in entries if p.is_file()]
    if any(split_ext(p)[1] in READ_FORMATS and split_ext(p)[1] not in _DICOM_ENDINGS
           for p in loose):
        return True
    return not loose and any(p.is_dir() for p in entries)


def list_cases(folder: str | Path, channel: int = 0) -> list[Case]:
    """The cases of ``folder`` sorted by name (files with a known image ending, plus
    subfolders holding DICOM series); with channel suffixes only ``_{channel:04d}`` is used.
    InputError for an empty folder or two files of one case."""
    folder = Path(folder)
    suffix = f"{channel:04d}"
    cases: dict[str, Case] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            name, ending = path.name, ""
        else:
            stem, ending = split_ext(path)
            if ending not in READ_FORMATS:
                continue  # prompts.json, dataset.json, notes
            match = _CHANNEL.match(stem)
            if match and match["channel"] != suffix:
                continue  # another channel of a multi-channel case
            name = match["case"] if match else stem
        if name in cases:
            raise InputError(f"{folder}: two inputs for case {name!r}: "
                             f"{cases[name].path.name}, {path.name}")
        cases[name] = Case(name, path, ending)
    if not cases:
        raise InputError(f"{folder}: no images (CASE_{suffix}.nii.gz, .png, ... or DICOM series "
                         "folders) in this folder")
    return list(cases.values())


def read_prompts_file(path: str | Path, cases: list[Case]) -> dict[str, CasePrompts]:
    """Case name -> prompts from a JSON file (see the module docstring). Every case named in
    the file must be in ``cases`` (a typo would otherwise silently leave a case unprompted)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read prompts file ({err.strerror or err})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected an object {{\"case\": {{\"boxes\": [...]}}}}")
    unknown = sorted(set(raw) - {c.name for c in cases})
    if unknown:
        raise InputError(f"{path}: cases not in the input folder: {', '.join(unknown[:5])}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return {name: _case_prompts(entry, f"{path}: case {name!r}") for name, entry in raw.items()}


def _case_prompts(entry, where: str) -> CasePrompts:
    """Check one case's entry and turn its numbers into the command line's strings."""
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected an object with boxes / points / text / labels")
    extra = sorted(set(entry) - {"boxes", "points", "text", "labels"})
    if extra:
        raise InputError(f"{where}: unknown key {extra[0]!r} (boxes, points, text, labels)")
    text = entry.get("text", [])
    text = [text] if isinstance(text, str) else text
    labels = entry.get("labels", [])
    if not (isinstance(text, list) and all(isinstance(t, str) and t.strip() for t in text)):
        raise InputError(f"{where}: 'text' must be a class name or a list of them")
    if not (isinstance(labels, list) and all(type(v) is int for v in labels)):
        raise InputError(f"{where}: 'labels' must be a list of integers")
    numbers = PromptNumbers(_numbers(entry, "boxes", where), _numbers(entry, "points", where),
                            tuple(labels))
    if not (numbers or text):
        raise InputError(f"{where}: no boxes, points or text")
    if numbers and len(text) > 1:
        raise InputError(f"{where}: beside boxes / points give one class name in 'text' "
                         "(it goes with every object); several names alone ask for those classes")
    if not numbers and len(text) > 1 and labels:
        raise InputError(f"{where}: several classes alone get the values 1, 2, ... in order; "
                         "drop 'labels'")
    return CasePrompts(numbers, [t.strip() for t in text])


def _numbers(entry: dict, key: str, where: str) -> tuple[tuple[float, ...], ...]:
    """A list of boxes or points, each a list of numbers or a "1,2,3" string."""
    items = entry.get(key, [])
    if not isinstance(items, list):
        raise InputError(f"{where}: '{key}' must be a list")
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                out.append(parse_numbers(item, key))
            except ParameterError as err:
                raise InputError(f"{where}: {err}") from None
        elif isinstance(item, list) and item and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in item):
            out.append(tuple(float(v) for v in item))
        else:
            raise InputError(f"{where}: each of '{key}' must be a list of numbers, got {item!r}")
    return tuple(out)
