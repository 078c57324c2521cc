"""What a bare MRML scene needs outside the Slicer application (slicer-core, scripts, tests).

Inside Slicer the application has already done all of this; every function here is idempotent and harmless
there.
"""

from __future__ import annotations

import logging

import slicer
import vtk

logger = logging.getLogger(__name__)

_CONVERTER_RULE_CLASSES = (
    "vtkBinaryLabelmapToClosedSurfaceConversionRule",
    "vtkClosedSurfaceToBinaryLabelmapConversionRule",
    "vtkClosedSurfaceToFractionalLabelmapConversionRule",
    "vtkFractionalLabelmapToClosedSurfaceConversionRule",
)


def ensureSegmentationConverterRules() -> None:
    """Register the segmentation representation converters when nobody has (the Slicer app does it at start).

    Without them a segmentation cannot even create an empty binary labelmap, nor a closed surface.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for className in _CONVERTER_RULE_CLASSES:
        if className not in registered and hasattr(slicer, className):
            factory.RegisterConverterRule(getattr(slicer, className)())
            logger.debug("registered segmentation converter rule %s", className)


def newScene() -> slicer.vtkMRMLScene:
    """A new MRML scene with an application logic and the default colour tables, as Slicer sets one up.

    Returns:
        the scene; its application logic is kept alive as the scene attribute ``_myopsAppLogic``.
    """
    ensureSegmentationConverterRules()
    scene = slicer.vtkMRMLScene()
    appLogic = slicer.vtkSlicerApplicationLogic()
    appLogic.SetMRMLScene(scene)
    colorLogic = slicer.vtkSlicerColorLogic()
    colorLogic.SetMRMLApplicationLogic(appLogic)
    # Outside the application there is no home directory with colour files; the logic reports that as an
    # error although the built-in tables (all we need) are created. Keep that noise out of the log.
    warnings = vtk.vtkObject.GetGlobalWarningDisplay()
    vtk.vtkObject.GlobalWarningDisplayOff()
    try:
        colorLogic.SetMRMLScene(scene)
        appLogic.SetModuleLogic("Colors", colorLogic)
        colorLogic.AddDefaultColorNodes()
    finally:
        vtk.vtkObject.SetGlobalWarningDisplay(warnings)
    # VTK objects do not keep their Python owners alive: hold the logics on the scene wrapper.
    scene._myopsAppLogic = appLogic
    scene._myopsColorLogic = colorLogic
    return scene
