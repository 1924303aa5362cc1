"""Turn SpatialData slides into arrays: element resolution, spot geometry, patches (never imports ``nn``)."""

from ._elements import SlideElements, as_spatialdata, fine_kind, input_tables, resolve_elements
from ._layout import GridInfo, SlideLayout, detect_grid, slide_layout
from ._members import Members, members
from ._patches import PatchGeometry, PatchReader, dihedral

__all__ = [
    "GridInfo",
    "Members",
    "PatchGeometry",
    "PatchReader",
    "SlideElements",
    "SlideLayout",
    "as_spatialdata",
    "detect_grid",
    "dihedral",
    "fine_kind",
    "input_tables",
    "members",
    "resolve_elements",
    "slide_layout",
]
