"""Dependencies injected into routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute

from convscope.config import Settings
from convscope.errors import InvalidParameterError
from convscope.services.facade import Convscope


def get_service(request: Request) -> Convscope:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[Convscope, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _param_names(dependant: Any, kind: str) -> frozenset[str]:
    """Names (aliases, as sent) of a route's ``query_params`` or ``body_params``, sub-deps too."""
    names = {field.alias for field in getattr(dependant, kind)}
    for sub in dependant.dependencies:
        names |= _param_names(sub, kind)
    return frozenset(names)


async def known_query_only(request: Request) -> None:
    """Refuse a query parameter the route does not take.

    FastAPI ignores unknown ones, so a typo (``?formt=npy``, ``?k=3`` for ``?top=3``) would
    quietly serve the defaults; here it is a 422 naming the parameter and the valid ones.
    Async, so it runs on the event loop rather than costing a worker-thread hop.
    """
    if not request.query_params:
        return
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    names = _param_names(route.dependant, "query_params")
    unknown = next((key for key in request.query_params if key not in names), None)
    if unknown is None:
        return
    if unknown in _param_names(route.dependant, "body_params"):
        raise InvalidParameterError(
            unknown, f"a form field of {route.path}, not a query parameter; send it in the body"
        )
    valid = ", ".join(sorted(names)) if names else "no query parameters"
    raise InvalidParameterError(
        unknown, f"unknown query parameter for {route.path}; expected {valid}"
    )
