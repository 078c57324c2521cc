"""Static checks of what only real Slicer can run: the .ui, the panel's use of it, packaging, Python 3.9 syntax.

These run everywhere (no slicer-core, no Qt).
"""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MyoPSSegmentation"
MODULE_FILE = MODULE_DIR / "MyoPSSegmentation.py"
LIB_DIR = MODULE_DIR / "MyoPSSegmentationLib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MyoPSSegmentation.ui"
TERM_FILE = MODULE_DIR / "Resources" / "MyoPSSegmentation.term.json"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "MyoPSSegmentation.png"
OUR_PYTHON = [MODULE_FILE, *sorted(LIB_DIR.glob("*.py"))]
#: The engine, which Slicer imports too (its CLI is the one module that prints).
ENGINE_PYTHON = sorted((MODULE_DIR / "myops").glob("*.py"))

#: Which widget classes the parameterNodeWrapper connects to which field types (Slicer >= 5.8 guiConnectors).
CONNECTABLE = {
    "node": {"qMRMLNodeComboBox"},
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "str": {"QLineEdit", "QLabel", "QTextEdit", "QComboBox", "ctkComboBox"},
    "enum": {"QComboBox", "ctkComboBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox", "QSlider", "QSpinBox"},
    "int": {"QSpinBox", "QSlider", "ctkSliderWidget"},
}


@pytest.fixture(scope="module")
def ui():
    return ET.parse(UI_FILE).getroot()


def widgets(ui):
    """{name: element} of every widget in the .ui."""
    return {w.get("name"): w for w in ui.iter("widget")}


def stringProperty(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            child = next(iter(prop))
            return child.text if child.tag in ("string", "bool", "enum", "set", "number") else child
    return None


def parameterFields():
    """{field: annotation source} of the @parameterNodeWrapper class in MyoPSSegmentation.py."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            return {
                item.target.id: ast.unparse(item.annotation)
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
    raise AssertionError("no @parameterNodeWrapper class in MyoPSSegmentation.py")


def test_ui_parses_with_a_qmrmlwidget_root(ui):
    assert ui.tag == "ui"
    root = ui.find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == "MyoPSSegmentation"
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"


def test_every_widget_the_panel_uses_exists_in_the_ui(ui):
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the panel uses no widget?"
    missing = used - set(widgets(ui))
    assert not missing, f"MyoPSSegmentation.py uses widgets absent from the .ui: {sorted(missing)}"


def test_every_parameter_is_bound_to_a_widget_that_can_show_it(ui):
    fields = parameterFields()
    bound = {}
    for _name, widget in widgets(ui).items():
        parameter = stringProperty(widget, "SlicerParameterName")
        if parameter:
            assert parameter not in bound, f"{parameter} bound twice"
            bound[parameter] = widget
    assert set(fields) == set(bound), f"fields {sorted(fields)} vs bound widgets {sorted(bound)}"
    for field, annotation in fields.items():
        widget = bound[field]
        if annotation.startswith("vtkMRML"):
            kind = "node"
            nodeTypes = [s.text for s in stringProperty(widget, "nodeTypes").findall("string")]
            assert nodeTypes == [annotation], f"{field}: selector shows {nodeTypes}, field holds {annotation}"
        elif annotation == "DeviceChoice":
            kind = "enum"
        else:
            kind = annotation
        assert widget.get("class") in CONNECTABLE[kind], f"{field}: {widget.get('class')} cannot show {annotation}"


def test_every_mrml_widget_receives_the_scene(ui):
    connected = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrmlWidgets = {name for name, w in widgets(ui).items() if w.get("class").startswith("qMRML")} - {
        "MyoPSSegmentation"
    }
    assert mrmlWidgets and mrmlWidgets <= connected, f"not given the scene: {sorted(mrmlWidgets - connected)}"


def test_output_selector_creates_a_new_segmentation_by_default(ui):
    selector = widgets(ui)["outputSegmentationSelector"]
    assert stringProperty(selector, "noneEnabled") == "true"
    assert stringProperty(selector, "noneDisplay") == "Create new segmentation"


def imports(path: Path):
    """(module name, is_top_level) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    topLevel = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in topLevel) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.module, id(node) in topLevel))
    return found


@pytest.mark.parametrize("path", sorted(LIB_DIR.glob("*.py")), ids=lambda p: p.name)
def test_lib_never_imports_qt_ctk_or_the_scripted_module_framework(path):
    forbidden = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "imp")
    bad = [name for name, _ in imports(path) if name.split(".")[0] in ("qt", "ctk", "imp") or name in forbidden]
    assert not bad, f"{path.name} imports {bad}"


def test_worker_runs_without_mrml():
    names = {name.split(".")[0] for name, _ in imports(LIB_DIR / "worker.py")}
    assert not names & {"slicer", "vtk", "qt", "ctk"}, names


def test_nothing_heavy_happens_when_the_module_file_is_imported():
    topLevel = {name for name, top in imports(MODULE_FILE) if top}
    assert not {n for n in topLevel if n.split(".")[0] in ("torch", "myops")}, topLevel
    for path in LIB_DIR.glob("*.py"):
        heavy = [name for name, top in imports(path) if top and name.split(".")[0] == "torch"]
        heavy += [name for name, top in imports(path) if top and name == "myops.pipeline"]
        assert not heavy, f"{path.name} imports {heavy} at import time"


@pytest.mark.parametrize("path", OUR_PYTHON + ENGINE_PYTHON, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_python_39_compatible(path):
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 9))
    postponed = "from __future__ import annotations" in source
    for node in ast.walk(tree):
        if not postponed:
            annotations = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs] + [node.returns]
            elif isinstance(node, ast.AnnAssign):
                annotations = [node.annotation]
            for annotation in filter(None, annotations):
                assert not any(
                    isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(annotation)
                ), f"{path.name}:{node.lineno}: 'X | Y' annotation is evaluated at run time on Python 3.9"
        printing = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
        if printing and path != MODULE_DIR / "myops" / "cli.py":
            raise AssertionError(f"{path.name}:{node.lineno}: library code logs, it does not print")


def cmakeList(text: str, variable: str):
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    return [item for item in match.group(1).split() if not item.startswith("#")]


def test_module_cmake_lists_every_python_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(
        r"if\(BUILD_TESTING\)\s+(#[^\n]*\n\s*)*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text
    )
    scripts = [s.replace("${MODULE_NAME}", "MyoPSSegmentation") for s in cmakeList(text, "MODULE_PYTHON_SCRIPTS")]
    onDisk = sorted(
        p.relative_to(MODULE_DIR).as_posix()
        for p in MODULE_DIR.rglob("*.py")
        if "__pycache__" not in p.parts and not p.relative_to(MODULE_DIR).as_posix().startswith("Resources/")
    )
    assert sorted(scripts) == onDisk, (
        f"add to MyoPSSegmentation/CMakeLists.txt: {sorted(set(onDisk) - set(scripts))}; "
        f"remove: {sorted(set(scripts) - set(onDisk))}"
    )
    resources = [r.replace("${MODULE_NAME}", "MyoPSSegmentation") for r in cmakeList(text, "MODULE_PYTHON_RESOURCES")]
    for resource in (
        "Resources/Icons/MyoPSSegmentation.png",
        "Resources/UI/MyoPSSegmentation.ui",
        "Resources/MyoPSSegmentation.term.json",
    ):
        assert resource in resources and (MODULE_DIR / resource).is_file(), resource
    assert "${MODULE_MODEL_FILES}" in resources
    globs = re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(myops/models/default/\*\.\w+)", text)
    assert set(globs) == {"myops/models/default/*.json", "myops/models/default/*.safetensors"}
    modelDir = MODULE_DIR / "myops" / "models" / "default"
    if (modelDir / "manifest.json").is_file():
        manifest = json.loads((modelDir / "manifest.json").read_text(encoding="utf-8"))
        needed = {"manifest.json"} | set(re.findall(r'"([^"]+\.safetensors)"', json.dumps(manifest)))
        for name in needed:
            assert any(fnmatch.fnmatch(f"myops/models/default/{name}", g) for g in globs), name
            assert (modelDir / name).is_file(), f"the manifest names {name}, which is not in the model folder"


def test_extension_cmake_carries_metadata_and_depends_on_pytorch():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf"set\(EXTENSION_{variable} ", text), variable
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', text)
    for line in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(MyoPSSegmentation)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert line in text, line


def test_s4ext_has_the_standard_fields():
    fields = {}
    for line in (ROOT / "MyoPSExtension.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    for key in (
        "scm",
        "scmurl",
        "scmrevision",
        "depends",
        "build_subdirectory",
        "homepage",
        "contributors",
        "category",
        "iconurl",
        "status",
        "description",
        "screenshoturls",
        "enabled",
    ):
        assert key in fields, key
    assert fields["depends"] == "PyTorch" and fields["scm"] == "git" and fields["enabled"] in ("0", "1")
    assert fields["iconurl"].endswith("Resources/Icons/MyoPSSegmentation.png")


def test_terminology_file_covers_every_segment():
    from myops.labels import SEGMENTS, TERMINOLOGY_CONTEXT

    document = json.loads(TERM_FILE.read_text(encoding="utf-8"))
    assert document["SegmentationCategoryTypeContextName"] == TERMINOLOGY_CONTEXT
    entries = {}
    for category in document["SegmentationCodes"]["Category"]:
        for entry in category["Type"]:
            key = (
                category["CodingSchemeDesignator"],
                category["CodeValue"],
                entry["CodingSchemeDesignator"],
                entry["CodeValue"],
            )
            entries[key] = entry
    for spec in SEGMENTS:
        entry = entries.pop((spec.category.scheme, spec.category.code, spec.type.scheme, spec.type.code))
        assert entry["CodeMeaning"] == spec.type.meaning
        assert entry["recommendedDisplayRGBValue"] == [round(c * 255) for c in spec.color]
    assert not entries, f"entries without a segment: {list(entries)}"


def test_icon_is_a_valid_128_pixel_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, chunks, idat = 8, [], b""
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, kind
        chunks.append(kind)
        idat += body if kind == b"IDAT" else b""
        offset += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (128, 128, 8, 6) and chunks[-1] == b"IEND"
    assert len(zlib.decompress(idat)) == height * (1 + 4 * width)


def test_module_loads_from_the_source_checkout_layout():
    """Slicer's 'additional module paths' loads <dir>/<Name>.py defining class <Name>; resources sit beside it."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {
        "MyoPSSegmentation",
        "MyoPSSegmentationWidget",
        "MyoPSSegmentationLogic",
        "MyoPSSegmentationTest",
    } <= classes
    assert (LIB_DIR / "__init__.py").is_file()
    # the Lib imports as a package from the module folder, as Slicer puts that folder on sys.path
    code = "import MyoPSSegmentationLib, MyoPSSegmentationLib.device, MyoPSSegmentationLib.dependencies"
    subprocess.run([sys.executable, "-c", code], cwd=MODULE_DIR, check=True)
