"""Dependencies injected into routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from convscope.config import Settings
from convscope.services.visualize import Convscope


def get_service(request: Request) -> Convscope:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


ServiceDep = Annotated[Convscope, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
