"""Emulated QKD devices behind ETSI GS QKD 014 (``keyplane device``).

* :mod:`.kme`      one end of a device as an ETSI 014 KME whose SAE is its node's KM
* :mod:`.service`  :class:`QkdDevice`: the link's emulation plus one HTTPS server per end
"""

from keyplane.device.kme import DeviceKme, device_key_id
from keyplane.device.service import DeviceSettings, QkdDevice

__all__ = ["DeviceKme", "DeviceSettings", "QkdDevice", "device_key_id"]
