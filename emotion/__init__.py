"""Emotion Studio core package: data, faces, audit, models, training and inference.

Importable without Streamlit; the app in ``app.py``/``app_pages/`` is a thin layer on top.
"""

__version__ = "0.1.0"
