"""Expected failures become a ``gr.Error`` with a plain message (no traceback; the server keeps
serving). The library's typed errors are the expected ones; anything else is a bug: logged with its
traceback and reported briefly."""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

import gradio as gr

from adapters import BackboneError, MethodError
from trainer.config import ConfigError
from trainer.data import DataError
from trainer.hub import HubError
from trainer.infer import InferenceError
from trainer.jobs.upload import UploadError

log = logging.getLogger("medpeft.app")

EXPECTED = (DataError, InferenceError, MethodError, BackboneError, UploadError, ConfigError, HubError)


def plain_error(action: str, e: Exception, secret: str | None = None) -> gr.Error:
    """``e`` as a gr.Error titled "Could not <action>"; ``secret`` (a token) is masked in the message."""
    if isinstance(e, EXPECTED):
        msg = str(e)
    else:  # a bug: keep serving, tell the user plainly, log for the developer
        log.error("unexpected error while trying to %s", action, exc_info=e)
        msg = f"unexpected {type(e).__name__} while trying to {action}: {e}"
    if secret:
        msg = msg.replace(secret, "***")
    return gr.Error(msg, title=f"Could not {action}", print_exception=False)


def user_errors(action: str) -> Callable:
    """Decorate a handler (plain or streaming) so that its errors reach the user as plain messages."""

    def wrap(fn):
        if inspect.isgeneratorfunction(fn):  # streaming handlers: errors raised while iterating too
            @functools.wraps(fn)
            def gen_inner(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except gr.Error:
                    raise
                except Exception as e:
                    raise plain_error(action, e) from None

            return gen_inner

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise plain_error(action, e) from None

        return inner

    return wrap
