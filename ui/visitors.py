"""Who is asking: every handler that touches a visitor's data runs under :func:`visitor_scoped`,
which gets the request (and, where the Space offers sign-in, the Hugging Face profile) from Gradio,
sets :func:`current_owner` for the duration of the call, and in public mode takes absolute server
paths out of error messages.

The owner is the signed-in Hugging Face user where the Space sets ``hf_oauth: true``; otherwise the
browser session (a new page load is a new session, and its work ends with it)."""
from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import re
import typing
from typing import Callable, Optional

import gradio as gr

from trainer.jobs.private import owner_id

_OWNER: contextvars.ContextVar[str | None] = contextvars.ContextVar("medpeft_owner", default=None)
_PROFILE: contextvars.ContextVar[object | None] = contextvars.ContextVar("medpeft_profile", default=None)
_REQUEST_PARAM, _PROFILE_PARAM = "medpeft_request", "medpeft_profile"
# An absolute POSIX path not inside a URL (``https://host/a/b`` is kept) and not a fraction.
ABS_PATH = re.compile(r"(?<![\w.:/~<-])(?:~|/)(?:[^\s`'\"()<>,;:|*?\[\]{}]+)")
SERVER_PATH = "<server path>"


def current_owner() -> str | None:
    """The owner of the call being handled (None outside a visitor-scoped handler: an operator call)."""
    return _OWNER.get()


def current_profile():
    """The signed-in Hugging Face profile (``gr.OAuthProfile``) of the call, or None."""
    return _PROFILE.get()


def owner_of(request: gr.Request | None, profile=None) -> str | None:
    user = getattr(profile, "username", None) or (profile.get("preferred_username") if isinstance(profile, dict)
                                                 else None)
    session = getattr(request, "session_hash", None)
    return owner_id(user, session) if (user or session) else None


def scrub_paths(text: str) -> str:
    """``text`` without absolute server paths (each becomes ``<server path>``)."""
    return ABS_PATH.sub(lambda m: SERVER_PATH if len(m.group(0)) > 1 else m.group(0), text)


@contextlib.contextmanager
def as_owner(owner: str | None, profile=None):
    """Run a block as ``owner`` (tests and scripts; handlers use :func:`visitor_scoped`)."""
    t1, t2 = _OWNER.set(owner), _PROFILE.set(profile)
    try:
        yield
    finally:
        _OWNER.reset(t1)
        _PROFILE.reset(t2)


def _is_public(args) -> bool:
    state = getattr(args[0], "state", None) if args else None
    settings = getattr(state, "settings", None)
    return bool(getattr(settings, "is_public", False))


def _scrubbed(e: gr.Error) -> gr.Error:
    msg = scrub_paths(str(e.message)).replace("\n", " · ")
    return gr.Error(msg, title=getattr(e, "title", "Error"), print_exception=False)


def visitor_scoped(fn: Callable) -> Callable:
    """Decorate a tab's handler method (plain or streaming): Gradio passes the request and the OAuth
    profile; the handler body sees :func:`current_owner`. In public mode (``self.state.settings``)
    an error message names no absolute server path and is one line."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    extra = [inspect.Parameter(_REQUEST_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                               annotation=Optional[gr.Request]),
             inspect.Parameter(_PROFILE_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                               annotation=Optional[gr.OAuthProfile])]
    # Gradio only fills positional parameters: ours go after the handler's own (which all have defaults
    # or are filled by the event's inputs).
    last_positional = max((i for i, p in enumerate(params) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)),
                          default=-1)
    params = params[:last_positional + 1] + extra + params[last_positional + 1:]
    new_sig = sig.replace(parameters=params)
    annotations = {**hints, _REQUEST_PARAM: Optional[gr.Request], _PROFILE_PARAM: Optional[gr.OAuthProfile]}

    def split(args, kwargs):
        bound = new_sig.bind_partial(*args, **kwargs)
        request = bound.arguments.pop(_REQUEST_PARAM, None)
        profile = bound.arguments.pop(_PROFILE_PARAM, None)
        if "request" in sig.parameters and bound.arguments.get("request") is None and request is not None:
            bound.arguments["request"] = request
        inner = inspect.BoundArguments(sig, bound.arguments)
        return inner.args, inner.kwargs, owner_of(request, profile), profile

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            a, k, owner, profile = split(args, kwargs)
            public = _is_public(a)
            with as_owner(owner, profile):
                it = fn(*a, **k)
            while True:
                try:
                    with as_owner(owner, profile):  # each step may run on another worker thread
                        item = next(it)
                except StopIteration:
                    return
                except gr.Error as e:
                    raise (_scrubbed(e) if public else e) from None
                yield item

        wrapper = gen_wrapper
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            a, k, owner, profile = split(args, kwargs)
            try:
                with as_owner(owner, profile):
                    return fn(*a, **k)
            except gr.Error as e:
                if _is_public(a):
                    raise _scrubbed(e) from None
                raise

    del wrapper.__wrapped__  # Gradio reads the signature below, with the request and profile
    wrapper.__signature__ = new_sig
    wrapper.__annotations__ = annotations
    return wrapper
