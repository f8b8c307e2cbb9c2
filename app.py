"""Emotion Studio. Run with: streamlit run app.py

The router: every page of the app, named for what it is, in menu order
(``ui.navigation.PAGES``); the first, Home, opens by default.
"""

from __future__ import annotations

import streamlit as st

from ui.navigation import PAGES

st.navigation([st.Page(page.path, title=page.title, icon=page.icon, default=i == 0)
               for i, page in enumerate(PAGES)]).run()
