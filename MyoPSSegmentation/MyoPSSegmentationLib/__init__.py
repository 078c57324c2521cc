"""Scene-facing logic of the MyoPSSegmentation 3D Slicer module.

Everything here runs with Slicer's core libraries alone (``pip install slicer-core``): it imports ``slicer``,
``vtk``, ``SimpleITK``, ``numpy`` and the ``myops`` engine, never ``qt`` or ``ctk``. The Qt panel in
``MyoPSSegmentation.py`` is a thin shell around it.

Submodules are not imported here, so that the background worker (``worker.py``, run by ``PythonSlicer``) does
not pull in MRML when it only needs the engine.
"""
