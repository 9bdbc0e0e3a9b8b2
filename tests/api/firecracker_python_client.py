"""Drives an ember API socket with an unmodified third-party Firecracker
client: firecracker-python (PyPI), its REST client `firecracker.api.Api`
and its VMM manager's pause/resume/state/config calls.

    python firecracker_python_client.py DATA_DIR VMM_ID KERNEL ROOTFS

The socket must be at DATA_DIR/VMM_ID/firecracker.socket (the library's
layout). Prints one JSON line per HTTP exchange the library made
({"method", "path", "body", "status"}), then "DONE". Exits non-zero on the
first unexpected answer.
"""

import json
import sys

from firecracker.api import Api
from firecracker.exceptions import APIError
from firecracker.vmm import VMMManager

data_dir, vmm_id, kernel, rootfs = sys.argv[1:5]
socket = f"{data_dir}/{vmm_id}/firecracker.socket"


def record(resp, *args, **kwargs):
    req = resp.request
    body = req.body.decode() if isinstance(req.body, bytes) else req.body
    print(json.dumps({"method": req.method, "path": req.path_url,
                      "body": json.loads(body) if body else None,
                      "status": resp.status_code}), flush=True)


def api():
    a = Api(socket)
    a.session.hooks["response"].append(record)
    return a


def expect(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)


a = api()
info = a.describe.get().json()
expect(info["state"] == "Not started", f"initial state {info}")
expect(set(info) == {"id", "state", "vmm_version", "app_name"}, f"InstanceInfo fields {info}")
expect("firecracker_version" in a.version.get().json(), "GET /version")

# What firecracker-python's MicroVM.create() sends, in its order.
a.boot.put(kernel_image_path=kernel,
           boot_args="console=ttyS0 reboot=k pci=off panic=1 "
                     "ip=172.16.0.2::172.16.0.1:255.255.255.0:vm0:eth0:on")
a.drive.put(drive_id="rootfs", path_on_host=rootfs, is_root_device=True, is_read_only=False)
a.machine_config.put(vcpu_count=2, mem_size_mib=256)
a.network.put(iface_id="eth0", host_dev_name="tap0")
mc = a.machine_config.get().json()
expect(mc["vcpu_count"] == 2 and mc["mem_size_mib"] == 256, f"machine config {mc}")

# A refusal comes back as the library's APIError carrying fault_message.
try:
    a.machine_config.put(vcpu_count=0, mem_size_mib=256)
    expect(False, "vcpu_count 0 was accepted")
except APIError as e:
    expect("vcpu_count 0" in str(e), f"fault message {e}")

a.actions.put(action_type="InstanceStart")
a.close()

# Pause, resume, state and config through the library's VMM manager.
m = VMMManager()
m._config.data_path = data_dir
expect(m.get_vmm_state(vmm_id) == "Running", "state after InstanceStart")
m.update_vmm_state(vmm_id, "Paused")
expect(m.get_vmm_state(vmm_id) == "Paused", "state after pause")
m.update_vmm_state(vmm_id, "Resumed")
expect(m.get_vmm_state(vmm_id) == "Running", "state after resume")
cfg = m.get_vmm_config(vmm_id)
expect(cfg["machine-config"]["vcpu_count"] == 2, f"vm config {cfg}")
expect(cfg["drives"][0]["path_on_host"] == rootfs, f"vm config drives {cfg}")

# Stop: Ctrl-Alt-Del (the library's own stop is SIGTERM to the process).
a = api()
a.actions.put(action_type="SendCtrlAltDel")
a.close()
print("DONE", flush=True)
