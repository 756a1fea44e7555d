"""Helpers shared by the course's lecture notebooks, one idea per module.

Import what a notebook needs from the module that holds it, e.g.
``from utils.device import pick_device``; :func:`utils.notebook.setup` does the usual first cell.
"""
