"""Streamlit-side helpers shared by app.py and pages/ (the `emotion` package stays Streamlit-free)."""
