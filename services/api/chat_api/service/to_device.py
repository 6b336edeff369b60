"""SendToDevice, GetToDeviceMessages, AckToDeviceMessages: per-device mailboxes.

A to-device message is stored for its one target device until that device acknowledges it,
then deleted (docs/e2ee.md). A sender reaches only devices of members of a conversation it is
itself a member of, from one of its own registered devices; a device reads and acknowledges
only its own mailbox (the caller's own device).
"""

from __future__ import annotations

from collections.abc import Sequence

from chat_api.models import ToDeviceRecord
from chat_api.service.devices import DEVICE_NOT_FOUND, DeviceService
from chat_api.storage.devices import DeviceRepository
from chat_api.storage.to_device import ToDeviceRepository
from chat_shared.auth import Principal
from chat_shared.errors import FailedPrecondition, NotFound

DEFAULT_INBOX_LIMIT = 100


class ToDeviceService:
    def __init__(self, repo: ToDeviceRepository, devices: DeviceRepository,
                 device_service: DeviceService) -> None:
        self._repo = repo
        self._devices = devices
        self._device_service = device_service

    async def send(self, caller: Principal, conversation_id: str, sender_device: str,
                   messages: Sequence[tuple[str, str, str, str]]) -> int:
        """Stores (recipient, device, type, body) messages; how many were stored (those to
        devices that do not exist are dropped: a device may be removed meanwhile)."""
        members = await self._device_service.members(caller, conversation_id)
        if await self._devices.device(caller.tenant_id, caller.user_id, sender_device) is None:
            raise FailedPrecondition("sender_device: not a registered device of the caller "
                                     "(RegisterDevice)", reason="UNKNOWN_DEVICE")
        return await self._repo.send(caller.tenant_id, conversation_id, caller.user_id,
                                     sender_device, members, messages)

    async def inbox(self, caller: Principal, device_id: str, after_id: int, limit: int
                    ) -> list[ToDeviceRecord]:
        await self._own_device(caller, device_id)
        return await self._repo.inbox(caller.tenant_id, caller.user_id, device_id, after_id,
                                      limit or DEFAULT_INBOX_LIMIT)

    async def acknowledge(self, caller: Principal, device_id: str, up_to_id: int) -> int:
        await self._own_device(caller, device_id)
        return await self._repo.acknowledge(caller.tenant_id, caller.user_id, device_id,
                                            up_to_id)

    async def _own_device(self, caller: Principal, device_id: str) -> None:
        if await self._devices.device(caller.tenant_id, caller.user_id, device_id) is None:
            raise NotFound(DEVICE_NOT_FOUND)
