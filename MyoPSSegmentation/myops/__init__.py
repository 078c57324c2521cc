"""myops: cascade segmentation of myocardial scar, edema and myocardium from multi-sequence cardiac MR.

The engine behind the MyoPSSegmentation 3D Slicer module and the ``myops`` command. It depends on torch,
numpy and SimpleITK only (slicerio for ``.seg.nrrd``); it never imports slicer, vtk or qt, and importing it
does nothing (no device probing, no downloads, no printing).

Axis conventions: numpy volumes are ``(z, y, x)`` with ``spacing_zyx`` in mm; SimpleITK images carry
LPS physical geometry. The output grid of every segmentation is the LGE volume's grid.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
