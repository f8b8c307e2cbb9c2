"""Streamlit-side helpers shared by app.py and app_pages/ (the `emotion` package stays Streamlit-free)."""
