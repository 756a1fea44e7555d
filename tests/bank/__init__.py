"""Wrong-answer banks of the assignments: tests/bank/<assignment>.py defines WRONG (and RIGHT)."""
