"""MyoPS Segmentation: myocardium, edema and scar from bSSFP, LGE and T2 cardiac MR, as editable segments.

Thin Qt shell (Module, parameter node, Widget, Logic, Test) around ``MyoPSSegmentationLib``, which holds all
scene logic and runs on Slicer's core libraries alone. The engine (``myops``) does the image work.
"""

import logging
import os
import time

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MyoPSSegmentationLib import segments
from MyoPSSegmentationLib.device import DeviceChoice
from MyoPSSegmentationLib.logic import MyoPSLogic, warningsPrefix

#: How often the panel looks at a background run (ms).
POLL_INTERVAL_MS = 200


class MyoPSSegmentation(ScriptedLoadableModule):
    """Module metadata."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MyoPS Segmentation"
        self.parent.categories = ["Segmentation", "Cardiac"]
        self.parent.dependencies = []
        self.parent.contributors = ["MyoPS Segmentation developers"]
        self.parent.helpText = """
Segments the left-ventricular <b>myocardium</b>, <b>edema</b>, <b>scar</b> and the LV blood pool from three
aligned cardiac MR sequences of one patient: a bSSFP cine frame (C0), late gadolinium enhancement (LGE, DE)
and T2. The result is a segmentation on the LGE grid that can be corrected at once in Segment Editor, and a
table with volumes (mL), scar and edema as a percentage of the LV myocardium, and myocardial salvage.<br><br>
Method: a two-stage cascade. An anatomical network with three encoders finds the LV wall (the paper's
denoising auto-encoder shape prior is optional and off in the shipped model, which scored better without it); a
pathology network fuses the three sequences with channel attention to find scar and edema.<br><br>
<b>Limits.</b> Research software, <b>not for clinical diagnosis</b>. Trained for short-axis LV stacks like those
of the MyoPS 2020 challenge; other views, the right ventricle, or poorly aligned sequences are out of scope.
Always review and correct the segments. See docs/slicer.md in the source repository.
"""
        self.parent.acknowledgementText = """
Implements the cascade multi-modality pathology segmentation framework (anatomical structure segmentation
network with a denoising auto-encoder, and pathological region segmentation network with a channel-attention
fusion block) evaluated in the MyoPS 2020 challenge. Data and challenge: X. Zhuang, L. Li (eds.), Myocardial
Pathology Segmentation Combining Multi-Sequence CMR (MyoPS 2020), LNCS 12554, Springer, 2020; L. Li et al.,
MyoPS: A benchmark of myocardial pathology segmentation combining three-sequence cardiac magnetic resonance
images, Medical Image Analysis 87 (2023) 102808.
"""
        slicer.app.connect("startupCompleted()", registerTerminology)


def registerTerminology():
    """Make the MyoPS terminology context (blood pool code, colours) available in Slicer's terminology lists."""
    from MyoPSSegmentationLib.segments import TERMINOLOGY_FILE

    try:
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    except Exception as error:  # the module works without it; segments keep their codes
        logging.warning("MyoPS terminology not loaded: %s", error)


@parameterNodeWrapper
class MyoPSSegmentationParameterNode:
    """Panel state, saved with the scene.

    bssfpVolume, lgeVolume, t2Volume - the three input sequences.
    outputSegmentation - where results go; None creates a new segmentation (then selected here).
    device - where the engine runs.
    showSurface - build closed surfaces for the 3D view.
    statusText - the last run's outcome (time, device) shown under the buttons.
    """

    bssfpVolume: vtkMRMLScalarVolumeNode
    lgeVolume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: DeviceChoice = DeviceChoice.AUTO
    showSurface: bool = True
    statusText: str = ""


class MyoPSSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. Runs the engine in a background process, polled with a QTimer, so the GUI stays responsive."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._runContext = None
        self._timer = None
        self._cancelRequested = False
        self._describedDevice = None

    # -- life cycle ----------------------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MyoPSSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MyoPSSegmentationLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPollRun)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.editSegmentsButton.connect("clicked(bool)", self.onEditSegmentsButton)
        self.ui.updateQuantificationButton.connect("clicked(bool)", self.onUpdateQuantificationButton)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onOutputChanged)
        self.initializeParameterNode()
        registerTerminology()

    def cleanup(self):
        self._stopRun()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self._noteStaleQuantification()

    def _noteStaleQuantification(self):
        """Back from Segment Editor: say when the result's table no longer describes its segments."""
        p = self._parameterNode
        output = p.outputSegmentation if p else None
        if output is None or self._run is not None or self.logic.quantificationTableNode(output) is None:
            return
        if not segments.quantificationIsCurrent(output):
            p.statusText = (
                f"'{output.GetName()}' was edited after its quantification was computed: press "
                "'Update quantification from the segments' to recompute the table."
            )

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event):
        self._stopRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, calldata):
        if self._parameterNode and calldata is not None and calldata.IsA("vtkMRMLScalarVolumeNode"):
            qt.QTimer.singleShot(0, self._preselectInputs)  # the node gets its name after being added

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        self._preselectInputs()

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _preselectInputs(self):
        """Fill empty input selectors when a volume's name makes its sequence obvious (C0/DE/T2...)."""
        from MyoPSSegmentationLib.logic import guessInputVolumes

        p = self._parameterNode
        if not p:
            return
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        guessed = guessInputVolumes(volumes)
        for role, attribute in (("bSSFP", "bssfpVolume"), ("LGE", "lgeVolume"), ("T2", "t2Volume")):
            if getattr(p, attribute) is None and role in guessed:
                setattr(p, attribute, guessed[role])

    # -- GUI state -----------------------------------------------------------------------------------------------
    def _updateGui(self, caller=None, event=None):
        p = self._parameterNode
        running = self._run is not None
        ready = bool(p and p.bssfpVolume and p.lgeVolume and p.t2Volume)
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (
            "Segment myocardium, edema, scar and the LV blood pool."
            if ready
            else "Select the bSSFP, LGE and T2 volumes first."
        )
        self.ui.cancelButton.enabled = running
        for widget in (
            self.ui.inputsCollapsibleButton,
            self.ui.outputsCollapsibleButton,
            self.ui.advancedCollapsibleButton,
        ):
            widget.enabled = not running
        self.onOutputChanged()
        if p and p.device != self._describedDevice:
            self._describedDevice = p.device
            qt.QTimer.singleShot(0, self._describeDevice)  # imports torch: after the panel is shown

    def onOutputChanged(self, node=None):
        segmentationNode = self._parameterNode.outputSegmentation if self._parameterNode else None
        table = self.logic.quantificationTableNode(segmentationNode) if segmentationNode else None
        self.ui.quantificationTableView.setMRMLTableNode(table)
        self.ui.editSegmentsButton.enabled = segmentationNode is not None and self._run is None
        self.ui.updateQuantificationButton.enabled = segmentationNode is not None and self._run is None

    def _describeDevice(self):
        """Show which GPU the chosen device gets, or why there is none."""
        from MyoPSSegmentationLib.device import describeDevice

        choice = self._parameterNode.device if self._parameterNode else DeviceChoice.AUTO
        self.ui.deviceInfoLabel.text = describeDevice(choice.value)

    # -- run -----------------------------------------------------------------------------------------------------
    def onApplyButton(self):
        from myops.errors import InputError
        from MyoPSSegmentationLib.background import BackgroundSegmentation, pythonSlicerExecutable

        p = self._parameterNode
        try:
            self.logic.validateInputs(p.bssfpVolume, p.lgeVolume, p.t2Volume)
        except InputError as error:
            slicer.util.errorDisplay(str(error), windowTitle="MyoPS Segmentation: input problem")
            return
        output, outputNote = self.logic.outputForRun(p.outputSegmentation, p.lgeVolume)
        overwrite = False
        if output is not None and self.logic.isEditedSinceLastRun(output):
            choice = self._askAboutEditedOutput(output)
            if choice is None:
                return
            output, overwrite = (output, True) if choice == "overwrite" else (None, False)
        if not self.ensureDependencies():
            return
        try:
            images = self.logic.imagesFromNodes(p.bssfpVolume, p.lgeVolume, p.t2Volume)
        except InputError as error:
            slicer.util.errorDisplay(str(error), windowTitle="MyoPS Segmentation: input problem")
            return
        python = pythonSlicerExecutable()
        self._runContext = {
            "lge": p.lgeVolume,
            "inputs": (p.bssfpVolume, p.lgeVolume, p.t2Volume),
            "inputState": self.logic.inputState(p.bssfpVolume, p.lgeVolume, p.t2Volume),
            "output": output,
            "outputNote": outputNote,
            "overwrite": overwrite,
            "fingerprint": self.logic.outputFingerprint(output),
            "showSurface": p.showSurface,
            "started": time.monotonic(),
        }
        if python is None:  # unusual installs: run in this process, keeping the GUI alive between stages
            self._runInProcess(p, output, overwrite, outputNote)
            return
        self._run = BackgroundSegmentation(
            python, device=p.device.value, modelDir=self.logic.modelDir, env=slicer.util.startupEnvironment()
        )
        try:
            self._run.start(*images)
        except Exception as error:  # e.g. no space for the inputs in the temporary folder: say so, not just log it
            self._run.cleanup()
            self._run = None
            self._runContext = None
            logging.error("MyoPS segmentation could not start: %s", error)
            p.statusText = f"Failed to start: {error}"
            slicer.util.errorDisplay(f"The segmentation could not start: {error}", windowTitle="MyoPS Segmentation")
            self._updateGui()
            return
        self._showProgress(0.0, "Starting")
        self._timer.start()
        self._updateGui()

    def _askAboutEditedOutput(self, output):
        """'overwrite', 'new', or None (cancel) for an output segmentation the user has edited."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setIcon(qt.QMessageBox.Warning)
        box.setWindowTitle("MyoPS Segmentation: edited segmentation")
        box.setText(
            f"'{output.GetName()}' has been edited since it was computed.\n\n"
            "Write the new result into a new segmentation, or overwrite your edits?"
        )
        newButton = box.addButton("Create new segmentation", qt.QMessageBox.AcceptRole)
        overwriteButton = box.addButton("Overwrite my edits", qt.QMessageBox.DestructiveRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(newButton)
        box.exec_()
        if box.clickedButton() == newButton:
            return "new"
        if box.clickedButton() == overwriteButton:
            return "overwrite"
        return None

    def onPollRun(self):
        if self._run is None:
            self._timer.stop()
            return
        fraction, message = self._run.poll()
        if getattr(self._run, "cancelled", False):
            message = "Cancelling..."  # not the worker's last stage, which it will not finish
        self._showProgress(fraction, message)
        if not self._run.running:
            self._timer.stop()
            self._finishRun()

    def _finishRun(self):
        from myops.errors import CancelledError, InputError, ModelError

        run, context = self._run, self._runContext
        try:
            result = run.result()
            info = {
                "device": result.device,
                "deviceReason": result.deviceReason,
                "timings_s": result.timings_s,
                "warnings": list(result.warnings),
            }
            self._writeResult(result.labels, result.quantificationRows, info, context)
        except CancelledError:
            self._parameterNode.statusText = "Cancelled."
        except (InputError, ModelError) as error:
            self._parameterNode.statusText = f"Failed: {error}"
            slicer.util.errorDisplay(str(error), windowTitle="MyoPS Segmentation")
        except Exception as error:
            self._parameterNode.statusText = "Failed (details in the Python console)."
            logging.error("MyoPS segmentation failed: %s", error)
            slicer.util.errorDisplay(f"Segmentation failed: {error}", windowTitle="MyoPS Segmentation")
        finally:
            run.cleanup()
            self._run = None
            self._runContext = None
            self.ui.progressBar.visible = False
            self._updateGui()

    def _writeResult(self, labels, rows, info, context):
        lge = context["lge"]
        node, note = self.logic.landFinishedResult(
            labels,
            rows,
            lge,
            context["output"],
            info=info,
            overwrite=context["overwrite"],
            createClosedSurface=context["showSurface"],
            fingerprintAtStart=context["fingerprint"],
        )
        self._parameterNode.outputSegmentation = node
        note = context.get("outputNote", "") + note
        note += self.logic.changedInputsNote(self.logic.changedInputs(context["inputState"], *context["inputs"]))
        elapsed = time.monotonic() - context["started"]
        self._parameterNode.statusText = warningsPrefix(info) + (
            f"Done in {elapsed:.1f} s on {info.get('device') or '?'} ({info.get('deviceReason', '')}). "
            f"Result: '{node.GetName()}'.{note}"
        )
        slicer.util.setSliceViewerLayers(background=lge, fit=False)

    def _runInProcess(self, p, output, overwrite, outputNote=""):
        from myops.errors import CancelledError

        self._cancelRequested = False
        self._describedDevice = None
        self._run = "in-process"
        self._updateGui()

        def progress(fraction, message):
            self._showProgress(fraction, message)
            slicer.app.processEvents()

        try:
            node = self.logic.segment(
                p.bssfpVolume,
                p.lgeVolume,
                p.t2Volume,
                output,
                device=p.device.value,
                overwrite=overwrite,
                progress=progress,
                shouldCancel=lambda: self._cancelRequested,
                createClosedSurface=p.showSurface,
            )
            info = self.logic.lastRunInfo
            p.outputSegmentation = node
            p.statusText = warningsPrefix(info) + (
                f"Done in {info['wall_s']:.1f} s on {info['device']} ({info['deviceReason']}). "
                f"Result: '{node.GetName()}'.{outputNote}{info.get('note', '')}"
            )
        except CancelledError:
            p.statusText = "Cancelled."
        except Exception as error:
            p.statusText = f"Failed: {error}"
            slicer.util.errorDisplay(str(error), windowTitle="MyoPS Segmentation")
        finally:
            self._run = None
            self.ui.progressBar.visible = False
            self._updateGui()

    def _showProgress(self, fraction, message):
        self.ui.progressBar.visible = True
        self.ui.progressBar.value = round(100 * fraction)
        self.ui.progressBar.format = f"{message} (%p%)" if message else "%p%"

    def onCancelButton(self):
        if self._run == "in-process":
            self._cancelRequested = True
        elif self._run is not None:
            self._run.cancel()
            self.ui.progressBar.format = "Cancelling... (%p%)"

    def _stopRun(self):
        if self._timer is not None:
            self._timer.stop()
        if self._run == "in-process":
            self._cancelRequested = True
        elif self._run is not None:
            self._run.cleanup()
        self._run = None
        self._runContext = None
        if getattr(self, "ui", None) is not None:
            self.ui.progressBar.visible = False  # the run it showed is gone (e.g. the scene was closed)

    def onEditSegmentsButton(self):
        p = self._parameterNode
        if not p or p.outputSegmentation is None:
            return
        seg = p.outputSegmentation
        # correct a result over the image it was computed on, not whichever LGE is selected now; a result whose
        # image was removed gets no source volume (the user picks one) rather than another study's LGE
        source = seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole())
        if source is None and seg.GetAttribute(segments.FINGERPRINT_ATTRIBUTE) is None:
            source = p.lgeVolume
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(seg)
        editor.setSourceVolumeNode(source)  # None too: the editor would otherwise keep the last study's volume

    def onUpdateQuantificationButton(self):
        """Recompute the table from the corrected segments; the segments themselves are left as they are."""
        from myops.errors import MyoPSError

        p = self._parameterNode
        if not p or p.outputSegmentation is None:
            return
        try:
            table, note = self.logic.updateQuantification(p.outputSegmentation)
        except (MyoPSError, RuntimeError) as error:  # e.g. a segmentation Slicer cannot export
            slicer.util.errorDisplay(str(error), windowTitle="MyoPS Segmentation: cannot measure")
            return
        self.ui.quantificationTableView.setMRMLTableNode(table)
        p.statusText = f"Quantification of '{p.outputSegmentation.GetName()}' recomputed from its segments.{note}"

    # -- dependencies --------------------------------------------------------------------------------------------
    def ensureDependencies(self):
        """Install missing packages after the user agrees; True when everything is there."""
        from MyoPSSegmentationLib import dependencies

        missing = dependencies.missingSummary()
        if not missing:
            return True
        text = (
            "MyoPS Segmentation needs these Python packages, which are not installed yet:\n\n- "
            + "\n- ".join(missing)
            + "\n\nDownload and install them now? This can take several minutes and needs internet access."
        )
        if not slicer.util.confirmOkCancelDisplay(text, windowTitle="MyoPS Segmentation: install dependencies"):
            return False
        with slicer.util.tryWithErrorDisplay("Failed to install the dependencies.", waitCursor=True):
            if not dependencies.torchInstalled():
                try:
                    import PyTorchUtils
                except ImportError:
                    slicer.util.errorDisplay(
                        "PyTorch is installed through the 'PyTorch' extension. Install it from the Extensions "
                        "Manager, restart Slicer, and press Apply again."
                    )
                    return False
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                    return False
            for requirement in dependencies.missingPipRequirements():
                slicer.util.pip_install(requirement)
        still = dependencies.missingSummary()
        if still:
            slicer.util.errorDisplay("Still missing: " + ", ".join(still))
        self._describeDevice()
        return not still


class MyoPSSegmentationLogic(ScriptedLoadableModuleLogic, MyoPSLogic):
    """Module logic: the Lib's :class:`MyoPSLogic` plus the typed parameter node. Scriptable without the panel::

    logic = MyoPSSegmentationLogic()  # or MyoPSSegmentationLogic(modelDir=...) for another model folder
    segmentationNode = logic.segment(bssfpNode, lgeNode, t2Node)
    """

    def __init__(self, modelDir=None, segmenterFactory=None):
        ScriptedLoadableModuleLogic.__init__(self)
        MyoPSLogic.__init__(self, modelDir=modelDir, segmenterFactory=segmenterFactory)

    def getParameterNode(self):
        return MyoPSSegmentationParameterNode(super().getParameterNode())


class MyoPSSegmentationTest(ScriptedLoadableModuleTest):
    """Self-test: the scenario of ``MyoPSSegmentationLib.selftest`` on the shipped model, in Slicer's scene.

    Run with ``Slicer --python-code "slicer.selfTests['MyoPSSegmentation']()"`` or ctest.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MyoPSSegmentation_scenario()

    def test_MyoPSSegmentation_scenario(self):
        from MyoPSSegmentationLib import dependencies
        from MyoPSSegmentationLib.selftest import runSelfTestScenario

        missing = dependencies.missingSummary()
        self.assertEqual(missing, [], "install the dependencies first (press Apply once in the module)")
        summary = runSelfTestScenario(
            slicer.mrmlScene,
            MyoPSSegmentationLogic(),
            device=os.environ.get("MYOPS_TEST_DEVICE", "auto"),
            say=self.delayDisplay,
        )
        self.assertGreater(summary["scarVoxelsAfterEdit"], summary["scarVoxelsBefore"])
        self.delayDisplay("MyoPS Segmentation self-test passed")
