"""Cells: what the web app knows about each cell class (``classes``) and the differential it counts."""
