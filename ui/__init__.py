"""The app's shared UI helpers, one module per concept; pages draw with them and call ``breakhis_core``.

- ``frame``: the router frame (``framed``, ``require_frame``), the app folder and its assets, the research-use notice.
- ``signin``: sign-in (``st.login``) and the roles a page requires.
- ``models``: the runs folder, models loaded once per process, the session's model, a run's result files.
- ``datasets``: the data sets the Train page offers (cached ``breakhis_core.data.discovery``).
- ``reports``: report downloads (PDF button).
- ``display``: formatting and the small drawing helpers every page uses.
- ``charts``: Plotly figures.
- ``server``: ``breakhis-app``, the console entry serving the installed app.

The package sits beside ``app.py`` because Streamlit runs ``app.py`` (and ``pages/``) with the app's folder
on ``sys.path``: ``import ui`` resolves the same from the tree (``make run``) and from the installed
``breakhis_app`` package (``breakhis-app``).
"""
