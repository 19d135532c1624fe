"""The app's entry point: the pages in the sidebar, Home first (`streamlit run app.py`)."""

import streamlit as st

PAGES = [
    st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Data.py", title="Data", icon=":material/folder_open:"),
    st.Page("pages/2_Train.py", title="Train", icon=":material/tune:"),
    st.Page("pages/3_Runs.py", title="Runs", icon=":material/schedule:"),
    st.Page("pages/4_Results.py", title="Results", icon=":material/show_chart:"),
    st.Page("pages/5_Inspect.py", title="Inspect", icon=":material/search:"),
    st.Page("pages/6_Glossary.py", title="Glossary", icon=":material/menu_book:"),
    st.Page("pages/7_Compare.py", title="Compare", icon=":material/balance:"),
]
st.navigation(PAGES).run()
