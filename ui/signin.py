"""Sign-in (``st.login``, configured in ``.streamlit/secrets.toml``) and the roles pages require
(``breakhis_core.lab.access``: viewer, trainer, from ``roles.toml``)."""

from __future__ import annotations

import streamlit as st

from breakhis_core.lab import access
from breakhis_core.errors import BreakHisError
from ui.display import show_error
from ui.models import runs_root


def sign_in_enabled() -> bool:
    """Whether ``.streamlit/secrets.toml`` (or ``secrets.files``) configures sign-in (an ``[auth]`` section)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file, or an unreadable one: no sign-in (Streamlit reports a bad file itself)
        return False


def current_user() -> str | None:
    """The signed-in user's e-mail address (its ``sub`` when the provider sends none), or None without sign-in."""
    if not sign_in_enabled() or not st.user.is_logged_in:
        return None
    return str(st.user.get("email") or st.user.get("sub") or "") or None


def current_role() -> str | None:
    """The user's role: "admin" without sign-in (the local user), else from the roles file (None = no role)."""
    if not sign_in_enabled():
        return access.ADMIN
    try:
        return access.load_roles(runs_root=runs_root()).role_of(current_user())
    except BreakHisError as exc:
        show_error(exc)
        return None


def may(needed: str) -> bool:
    """Whether the user's role allows ``needed``: pages link only to the pages the navigation lists for the user."""
    return access.allows(current_role(), needed)


def require_role(needed: str, what: str) -> None:
    """Stop the page, saying why, unless the user's role allows ``needed`` ("viewer" or "trainer")."""
    role = current_role()
    if access.allows(role, needed):
        return
    who = current_user() or "this account"
    has = f"the {role} role" if role else "no role"
    st.error(f"{what.capitalize()} needs the {needed} role; {who} has {has}. Ask the lab's administrator to add "
             f"you to {access.roles_path(runs_root())} ({needed} = [...]).", icon=":material/lock:")
    st.stop()


def sign_in_gate() -> None:
    """With sign-in configured: a sign-in screen until the user is signed in, then who they are in the sidebar."""
    if not sign_in_enabled():
        return
    if not st.user.is_logged_in:
        st.title("BreakHis decision support")
        st.write("Sign in with your hospital account to use the app.")
        st.button("Sign in", icon=":material/login:", on_click=st.login, type="primary", key="sign_in")
        st.stop()
    with st.sidebar:
        role = current_role()
        st.caption(f":material/account_circle: {current_user()} · {role or 'no role'}")
        st.button("Sign out", icon=":material/logout:", on_click=st.logout, key="sign_out")
