"""One file per backend; each imports its package inside ``_activate``."""
