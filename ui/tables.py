"""How tables show a value that is not there: a dash, never "None" (``st.dataframe(placeholder=...)``)."""

from __future__ import annotations

MISSING = "–"  # not measured (yet): e.g. a run still training, or one never evaluated for calibration
