"""Minimal stand-ins for what slicer-core lacks (qt, slicer.app, ScriptedLoadableModule, parameterNodeWrapper).

They let the panel code in MyoPSSegmentation.py run against a real MRML scene: the widgets are built from the
real .ui file (by name and class, without Qt), so a widget the code uses but the .ui lacks fails here too.
What they cannot show: real Qt layout, signals firing from user clicks, event-loop timing. Those need Slicer.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Optional

MODULE_DIR = Path(__file__).resolve().parents[1] / "MyoPSSegmentation"


class Recorder:
    """What the panel showed the user."""

    def __init__(self) -> None:
        self.errors: List[str] = []
        self.confirmations: List[str] = []
        self.confirmAnswer = True
        self.messageBoxAnswer = "new"  # button the user clicks in QMessageBox: "new" | "overwrite" | "cancel"
        self.selectedModules: List[str] = []
        self.editor = types.SimpleNamespace(segmentation=None, source=None)


class FakeSignalOwner:
    def __init__(self) -> None:
        self.connections: Dict[str, List[Callable]] = {}

    def connect(self, signal: str, slot: Callable) -> None:
        self.connections.setdefault(signal, []).append(slot)


class FakeWidget(FakeSignalOwner):
    """A widget from the .ui: its Qt class name and the properties the panel reads or writes."""

    def __init__(self, name: str, className: str) -> None:
        super().__init__()
        self.name, self.className = name, className
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.text = ""
        self.value = 0
        self.format = ""
        self.checked = False
        self.scene = None
        self.tableNode = None

    def setMRMLScene(self, scene) -> None:
        self.scene = scene

    def setMRMLTableNode(self, node) -> None:
        self.tableNode = node


def loadUiAsFakes(path: str) -> FakeWidget:
    root = ET.parse(path).getroot()
    top = root.find("widget")
    container = FakeWidget(top.get("name"), top.get("class"))
    container.children = {w.get("name"): FakeWidget(w.get("name"), w.get("class")) for w in root.iter("widget")}
    return container


class FakeTimer(FakeSignalOwner):
    singleShots: ClassVar[List[Callable]] = []

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.interval = 0

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    @staticmethod
    def singleShot(ms: int, slot: Callable) -> None:
        FakeTimer.singleShots.append(slot)


def makeQt(recorder: Recorder) -> types.ModuleType:
    qt = types.ModuleType("qt")

    class QMessageBox:
        Warning, AcceptRole, DestructiveRole, Cancel = "Warning", "AcceptRole", "DestructiveRole", "Cancel"

        def __init__(self, parent=None) -> None:
            self.buttons: List[tuple] = []
            self.text = ""

        def setIcon(self, icon) -> None:
            pass

        def setWindowTitle(self, title) -> None:
            pass

        def setText(self, text) -> None:
            self.text = text

        def addButton(self, *args):
            button = object()
            self.buttons.append((args[0], button))
            return button

        def setDefaultButton(self, button) -> None:
            pass

        def exec_(self) -> int:
            recorder.confirmations.append(self.text)
            wanted = {"new": "Create new segmentation", "overwrite": "Overwrite my edits"}.get(
                recorder.messageBoxAnswer
            )
            self._clicked = next((b for label, b in self.buttons if label == wanted), None)
            return 0

        def clickedButton(self):
            return self._clicked

    qt.QTimer = FakeTimer
    qt.QMessageBox = QMessageBox
    return qt


def makeScriptedLoadableModule(slicer) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent or types.SimpleNamespace(isEntered=True)
            self.layout = types.SimpleNamespace(widgets=[], addWidget=lambda w: self.layout.widgets.append(w))

        def setup(self) -> None:
            pass

        def resourcePath(self, filename: str) -> str:
            return str(MODULE_DIR / "Resources" / filename)

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = type(self).__name__.replace("Logic", "")

        def getParameterNode(self):
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetModuleName(self.moduleName)
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.displayed: List[str] = []

        def delayDisplay(self, message, *args, **kwargs) -> None:
            self.displayed.append(message)

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    return module


def makeParameterNodeWrapper() -> types.ModuleType:
    """``@parameterNodeWrapper``: typed attributes with defaults, Modified() on change, observable like a node."""
    import typing

    module = types.ModuleType("slicer.parameterNodeWrapper")

    def parameterNodeWrapper(cls):
        hints = typing.get_type_hints(cls)
        defaults = {name: getattr(cls, name, None) for name in hints}
        stores: Dict[str, dict] = {}

        class Wrapped:
            __name__ = cls.__name__
            fields = hints

            def __init__(self, node) -> None:
                object.__setattr__(self, "_node", node)
                object.__setattr__(self, "_values", stores.setdefault(node.GetID(), dict(defaults)))

            def __getattr__(self, name):
                if name in hints:
                    return self._values[name]
                raise AttributeError(name)

            def __setattr__(self, name, value) -> None:
                if name not in hints:
                    raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
                self._values[name] = value
                self._node.Modified()

            def AddObserver(self, *args):
                return self._node.AddObserver(*args)

            def RemoveObserver(self, tag):
                return self._node.RemoveObserver(tag)

            def connectGui(self, ui):  # the bindings themselves are checked statically against the .ui
                return object()

            def disconnectGui(self, tag) -> None:
                pass

        Wrapped.__qualname__ = cls.__qualname__
        return Wrapped

    module.parameterNodeWrapper = parameterNodeWrapper
    return module


def install(monkeypatch, scene, recorder: Recorder):
    """Install the stand-ins on the real ``slicer`` package and ``sys.modules``; returns the imported module file."""
    import slicer
    import slicer.util

    FakeTimer.singleShots = []
    monkeypatch.setitem(sys.modules, "qt", makeQt(recorder))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", makeScriptedLoadableModule(slicer))
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", makeParameterNodeWrapper())
    monkeypatch.delitem(sys.modules, "MyoPSSegmentation", raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)

    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    editorWidget = types.SimpleNamespace(
        setSegmentationNode=lambda node: setattr(recorder.editor, "segmentation", node),
        setSourceVolumeNode=lambda node: setattr(recorder.editor, "source", node),
    )
    modules = types.SimpleNamespace(
        terminologies=types.SimpleNamespace(logic=lambda: terminologies),
        segmenteditor=types.SimpleNamespace(
            widgetRepresentation=lambda: types.SimpleNamespace(self=lambda: types.SimpleNamespace(editor=editorWidget))
        ),
    )
    monkeypatch.setattr(slicer, "modules", modules, raising=False)
    app = FakeSignalOwner()
    app.processEvents = lambda: None
    monkeypatch.setattr(slicer, "app", app, raising=False)

    def errorDisplay(text, *args, **kwargs):
        recorder.errors.append(text)

    def confirmOkCancelDisplay(text, *args, **kwargs):
        recorder.confirmations.append(text)
        return recorder.confirmAnswer

    @contextlib.contextmanager
    def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
        yield

    def childWidgetVariables(widget):
        return types.SimpleNamespace(**widget.children)

    for name, value in {
        "loadUI": loadUiAsFakes,
        "childWidgetVariables": childWidgetVariables,
        "errorDisplay": errorDisplay,
        "confirmOkCancelDisplay": confirmOkCancelDisplay,
        "tryWithErrorDisplay": tryWithErrorDisplay,
        "startupEnvironment": lambda: dict(os.environ),
        "setSliceViewerLayers": lambda **kwargs: None,
        "mainWindow": lambda: None,
        "selectModule": recorder.selectedModules.append,
        "pip_install": lambda requirement: recorder.errors.append(f"pip_install called: {requirement}"),
    }.items():
        monkeypatch.setattr(slicer.util, name, value, raising=False)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    import MyoPSSegmentation

    return MyoPSSegmentation, terminologies


def runSingleShots() -> None:
    while FakeTimer.singleShots:
        FakeTimer.singleShots.pop(0)()


def pollUntilIdle(widget, timeout: float = 120.0, until: Optional[Callable[[], bool]] = None) -> None:
    """Drive the panel's QTimer as the event loop would, until the run ends (or ``until()`` holds)."""
    import time

    deadline = time.monotonic() + timeout
    while widget._run is not None:
        if until is not None and until():
            return
        assert time.monotonic() < deadline, "the background run did not finish"
        assert widget._timer.active, "the poll timer is not running during a run"
        widget.onPollRun()
        time.sleep(0.05)
