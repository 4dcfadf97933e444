"""tcomp_utils."""
