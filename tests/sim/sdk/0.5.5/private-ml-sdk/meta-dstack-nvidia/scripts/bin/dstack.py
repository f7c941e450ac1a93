#!/usr/bin/env python
"""``dstack`` of nearai/private-ml-sdk at tag v0.5.5: zerog.compute simulation stand-in.

An independent re-implementation of the upstream script's observable behaviour (``dstack.py``
blob 5274ba4): the same argparse interface, files written byte for byte, log lines, uncaught
exceptions, external programs and QEMU argv.  It is deliberately as unforgiving as upstream:
``new`` is not idempotent and leaves partial directories behind, ``-i`` omitted crashes after
``app-compose.json`` is written, ``-m`` reaches QEMU in whole GB, ``qemu-img`` runs even with
``--dry-run``, and ``run`` blocks until QEMU exits.  ``scripts/bin/dstack`` is a symlink to this
file and ``host_api`` is imported from this directory, as upstream does.
"""

import argparse
import configparser
import json
import logging
import os
import random
import re
import subprocess
import sys
import threading
import uuid
from datetime import datetime
from typing import Any

import host_api

logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s")
log = logging.getLogger(__name__)

PORT_FORMAT_ERROR = "Invalid port mapping format. Use 'protocol[:address]:from:to'"
SIZE_UNITS_MB = {"T": 1024 * 1024, "G": 1024, "M": 1}
NVIDIA_ID = re.compile(r"\[10de:([0-9A-Fa-f]+)\]")
VFIO_NEW_ID = "/sys/bus/pci/drivers/vfio-pci/new_id"
VFIO_REMOVE_ID = "/sys/bus/pci/drivers/vfio-pci/remove_id"


# ---------------------------------------------------------------------------------------------
# client.conf


def config_paths() -> list[str]:
    """client.conf candidates, lowest priority first (the CWD, then each parent up to ``/``)."""
    paths = ["/etc/dstack/client.conf", os.path.expanduser("~/.config/dstack/client.conf")]
    directory = os.getcwd()
    while directory != "/":
        paths.append(os.path.join(directory, ".dstack", "client.conf"))
        directory = os.path.dirname(directory)
    return paths


def load_client_config() -> dict[str, dict[str, str]]:
    """Merge every existing client.conf; later files win key by key."""
    merged: dict[str, dict[str, str]] = {}
    for path in config_paths():
        if not os.path.exists(path):
            continue
        log.info("Loading configuration from %s", path)
        parser = configparser.ConfigParser()
        parser.read(path)
        for section in parser.sections():
            merged.setdefault(section, {}).update(dict(parser.items(section)))
    return merged


class ClientConfig:
    """The three client.conf settings the script reads."""

    def __init__(self) -> None:
        conf = load_client_config()
        self.docker_registry: str | None = conf.get("docker", {}).get("registry")
        self.default_image_name: str = conf.get("image", {}).get("default", "")
        self.qemu_path: str = conf.get("qemu", {}).get("path", "qemu-system-x86_64")


# ---------------------------------------------------------------------------------------------
# helpers


def write_json(path: str, data: Any) -> None:
    """Write JSON the way upstream does: indent 4, no trailing newline."""
    with open(path, "w") as out:
        json.dump(data, out, indent=4)


def update_guest_config(path: str, values: dict[str, Any]) -> None:
    """Merge ``values`` into a guest JSON config file, creating it if needed."""
    current: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as src:
            current = json.load(src)
    current.update(values)
    write_json(path, current)


def write_vm_config(vm_dir: str, port: int, manifest: dict | None = None,
                    os_image_hash: str | None = None) -> None:
    """Point the guest at the host API (config.json and .sys-config.json)."""
    for name in ("config.json", ".sys-config.json"):
        path = os.path.join(vm_dir, "shared", name)
        update_guest_config(path, {"host_api_url": f"http://10.0.2.2:{port}/api",
                                   "host_vsock_port": port})
        if manifest:
            update_guest_config(path, {"vm_config": json.dumps({
                "os_image_hash": os_image_hash,
                "cpu_count": manifest["vcpu"],
                "memory_size": manifest["memory"] * 1024 * 1024,
            })})


def size_to_mb(text: str) -> int:
    """``4G`` -> 4096; a bare number is already MB (so ``-d 100`` means 100 MB)."""
    factor = SIZE_UNITS_MB.get(text[-1:].upper())
    if factor is None:
        return int(text)
    return int(text[:-1]) * factor


def parse_port(spec: str) -> dict[str, Any]:
    """``proto[:address]:from:to`` -> port_map entry (the address defaults to 127.0.0.1)."""
    try:
        fields = spec.split(":")
        if len(fields) == 4:
            proto, address, host_port, guest_port = fields
        elif len(fields) == 3:
            proto, host_port, guest_port = fields
            address = "127.0.0.1"
        else:
            raise ValueError(PORT_FORMAT_ERROR)
        return {"address": address, "protocol": proto.lower(),
                "from": int(host_port), "to": int(guest_port)}
    except ValueError as err:
        # implicit chaining on purpose: upstream's traceback shows "During handling of ..."
        raise ValueError(f"Invalid port mapping '{spec}': {err!s}")  # noqa: B904


def round_up(value: int, multiple: int) -> int:
    """Round ``value`` up to a multiple of ``multiple``."""
    if multiple <= 1 or value % multiple == 0:
        return value
    return value + multiple - value % multiple


def numa_node_of(slot: str) -> int:
    """NUMA node of a PCI device, read from sysfs (FileNotFoundError if the device is absent)."""
    if not slot.startswith("0000:"):
        slot = f"0000:{slot}"
    with open(f"/sys/bus/pci/devices/{slot}/numa_node") as src:
        return int(src.read().strip())


def nvidia_devices_for_attach() -> dict[str, Any]:
    """``--gpu all``: every NVIDIA 3D controller and NVSwitch bridge from ``lspci -d 10de: -nn``."""
    try:
        listing = subprocess.run(["lspci", "-d", "10de:", "-nn"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        gpus: list[dict[str, str]] = []
        bridges: list[dict[str, str]] = []
        for line in listing.split("\n"):
            if not line.strip() or not NVIDIA_ID.search(line):
                continue
            entry = {"slot": line.split()[0]}
            if "3D controller" in line:
                gpus.append(entry)
            elif "Bridge" in line:
                bridges.append(entry)
        log.info("Found %s GPU(s) and %s NVSwitch(es)", len(gpus), len(bridges))
        return {"attach_mode": "all", "gpus": gpus, "bridges": bridges}
    except subprocess.SubprocessError as err:
        log.warning("Failed to collect GPU information: %s", err)
        return {"attach_mode": "all", "gpus": [], "bridges": []}


def gpu_selection(requested: list[str] | None) -> dict[str, Any]:
    """The manifest's ``gpus`` object for the ``--gpu`` values given."""
    if requested == ["all"]:
        return nvidia_devices_for_attach()
    if requested is None or requested == ["none"]:
        return {"attach_mode": "listed", "gpus": []}
    return {"attach_mode": "listed", "gpus": [{"slot": slot} for slot in requested]}


# ---------------------------------------------------------------------------------------------
# new / run


class Instances:
    """``new`` and ``run``; creating one loads client.conf (and logs each file found)."""

    def __init__(self) -> None:
        self.run_path = os.path.abspath(os.getenv("RUN_PATH", "./vms"))
        self.config = ClientConfig()

    def create(self, args: argparse.Namespace) -> None:
        """``dstack new``."""
        try:
            instance_id = os.path.basename(args.dir) if args.dir else str(uuid.uuid4())
            work_dir = args.dir or os.path.join(self.run_path, instance_id)
            if os.path.exists(work_dir):
                raise FileExistsError(f"The instance already exists at {work_dir}")
            shared = os.path.join(work_dir, "shared")
            os.makedirs(shared, exist_ok=True)
            os.makedirs(os.path.join(shared, "certs"), exist_ok=True)

            if not os.path.isfile(args.compose_file):
                raise FileNotFoundError(f"Compose file not found: {args.compose_file}")
            with open(args.compose_file) as src:
                compose_text = src.read()
            write_json(os.path.join(shared, "app-compose.json"), {
                "manifest_version": 1,
                "name": "example",
                "version": "1.0.0",
                "features": [],
                "runner": "docker-compose",
                "docker_compose_file": compose_text,
                "local_key_provider_enabled": args.local_key_provider,
                "secure_time": False,
            })
            if self.config.docker_registry:
                update_guest_config(os.path.join(shared, ".sys-config.json"),
                                    {"docker_registry": self.config.docker_registry})

            memory_mb = size_to_mb(str(args.memory))
            disk_gb = size_to_mb(str(args.disk)) // 1024
            ports = [parse_port(spec) for spec in args.port or []]
            gpus = gpu_selection(args.gpu)
            manifest = {
                "id": instance_id,
                "name": "",
                "vcpu": args.vcpus,
                "gpus": gpus,
                "memory": memory_mb,
                "disk_size": disk_gb,
                "image_path": args.image,
                "image": os.path.basename(args.image.rstrip("/")),
                "port_map": ports,
                "pin_numa": args.pin_numa,
                "hugepages": args.hugepages,
                "created_at_ms": int(datetime.now().timestamp() * 1000),
            }
            write_json(os.path.join(work_dir, "vm-manifest.json"), manifest)
            log.info("Work directory prepared successfully at: %s", work_dir)
        except Exception as err:
            log.error("Failed to setup instance: %s", err)
            raise

    def start(self, vm_dir: str, host_port: int, imgdir: str | None = None,
              dry_run: bool = False) -> None:
        """``dstack run``: prepare the guest config and disk, then run QEMU in the foreground."""
        manifest_path = os.path.join(vm_dir, "vm-manifest.json")
        if not os.path.exists(manifest_path):
            raise ValueError(f"VM manifest not found in {vm_dir}")
        with open(manifest_path) as src:
            manifest = json.load(src)
        if dry_run:
            print("Manifest:")
            print(json.dumps(manifest, indent=4))

        image_dir = manifest.get("image_path") or os.path.join(imgdir, manifest["image"])
        metadata_path = os.path.join(image_dir, "metadata.json")
        if not os.path.exists(metadata_path):
            raise ValueError(f"Image metadata not found at {metadata_path}")
        with open(metadata_path) as src:
            image = json.load(src)
        with open(os.path.join(image_dir, "digest.txt")) as src:
            os_image_hash = src.read().strip()
        write_vm_config(vm_dir, host_port, manifest, os_image_hash)

        mem_gb = manifest["memory"] // 1024
        vcpus = manifest["vcpu"]
        disk = os.path.join(vm_dir, "hda.img")
        if not os.path.exists(disk):
            subprocess.run(["qemu-img", "create", "-f", "qcow2", disk,
                            f"{manifest['disk_size']}G"], check=True)
        cid = random.randint(1, 10000) + 3

        devices: list[str] = []
        rootfs = os.path.join(image_dir, image["rootfs"])
        if rootfs.endswith(".img.verity"):
            devices += ["-drive", f"file={rootfs},if=none,id=virtio-disk0,format=raw",
                        "-device", "virtio-blk-pci,drive=virtio-disk0"]
        elif rootfs.endswith(".img"):
            devices += ["-cdrom", rootfs]
        else:
            raise ValueError(f"Unsupported rootfs image format: {rootfs}")
        devices += ["-drive", f"file={disk},if=none,id=virtio-disk1",
                    "-device", "virtio-blk-pci,drive=virtio-disk1"]

        forwards = [
            f"hostfwd={fwd.get('protocol', 'tcp')}:{fwd.get('address', '127.0.0.1')}:"
            f"{fwd['from']}-:{fwd['to']}"
            for fwd in manifest.get("port_map", [])
        ]
        netdev = "user,id=nic0_td" + ("," + ",".join(forwards) if forwards else "")
        devices += ["-device", "virtio-net-pci,netdev=nic0_td", "-netdev", netdev]

        gpu_conf = manifest.get("gpus", {})
        gpus = gpu_conf.get("gpus", [])
        bridges = gpu_conf.get("bridges", [])
        hugepages = manifest.get("hugepages", False)
        if hugepages:
            per_node: dict[int, int] = {}
            if gpus:
                for gpu in gpus:
                    node = numa_node_of(gpu["slot"])
                    per_node[node] = per_node.get(node, 0) + 1
            else:
                per_node[0] = 0
            nodes = len(per_node)
            vcpus = round_up(vcpus, nodes)
            mem_gb = round_up(mem_gb, nodes)
            cpus_each = vcpus // nodes
            mem_each = mem_gb // nodes
            bus_nr = 5
            for index, (node, count) in enumerate(per_node.items()):
                first = index * cpus_each
                devices += [
                    "-numa", f"node,nodeid={index},cpus={first}-{first + cpus_each - 1},"
                             f"memdev=mem{index}",
                    "-object", f"memory-backend-file,id=mem{index},size={mem_each}G,"
                               f"mem-path=/dev/hugepages,share=on,prealloc=yes,"
                               f"host-nodes={node},policy=bind",
                    "-device", f"pxb-pcie,id=pcie.node{node},bus=pcie.0,addr={0xa + index},"
                               f"numa_node={index},bus_nr={bus_nr}",
                ]
                bus_nr += count + 1
        if gpus:
            devices += ["-object", "iommufd,id=iommufd0"]
            port_no = 1
            for gpu in gpus:
                parent = f"pcie.node{numa_node_of(gpu['slot'])}" if hugepages else "pcie.0"
                devices += [
                    "-device", f"pcie-root-port,id=pci.{port_no},bus={parent},chassis={port_no}",
                    "-device", f"vfio-pci,host={gpu['slot']},bus=pci.{port_no},iommufd=iommufd0",
                ]
                port_no += 1
            for bridge in bridges:
                devices += [
                    "-device", f"pcie-root-port,id=pci.{port_no},bus=pcie.0,chassis={port_no}",
                    "-device",
                    f"vfio-pci,host={bridge['slot']},bus=pci.{port_no},iommufd=iommufd0",
                ]
                port_no += 1
        devices += ["-append", image["cmdline"]]

        cmd = [
            self.config.qemu_path,
            "-accel", "kvm",
            "-m", f"{mem_gb}G",
            "-smp", str(vcpus),
            "-cpu", "host",
            "-machine", "q35,kernel_irqchip=split,confidential-guest-support=tdx,hpet=off",
            "-object", "tdx-guest,id=tdx",
            "-nographic",
            "-nodefaults",
            "-chardev", "stdio,id=ser0,signal=on",
            "-serial", "chardev:ser0",
            "-kernel", os.path.join(image_dir, image["kernel"]),
            "-initrd", os.path.join(image_dir, image["initrd"]),
            "-bios", os.path.join(image_dir, image["bios"]),
            "-virtfs", f"local,path={os.path.join(vm_dir, 'shared')},mount_tag=host-shared,"
                       "readonly=off,security_model=mapped,id=virtfs0",
            "-device", f"vhost-vsock-pci,guest-cid={cid}",
        ]
        if manifest.get("pin_numa", False):
            node = numa_node_of(gpus[0]["slot"]) if gpus else 0
            with open(f"/sys/devices/system/node/node{node}/cpulist") as src:
                cmd = ["taskset", "-c", src.read().strip(), *cmd]
        cmd += devices
        print(" \n".join(cmd))
        if dry_run:
            return
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"Failed to start VM: {err}")  # noqa: B904 - chained as upstream


# ---------------------------------------------------------------------------------------------
# lsgpu / tag-vfio / host API


def list_gpus() -> None:
    """``dstack lsgpu``: NVIDIA 3D controllers from ``lspci -vvk`` with NUMA node and use."""
    try:
        listing = subprocess.run(["lspci", "-vvk"], capture_output=True, text=True, check=False)
        blocks: list[list[str]] = []
        block: list[str] = []
        collecting = False
        for line in listing.stdout.split("\n"):
            if "NVIDIA" in line and "3D controller" in line:
                if block:
                    blocks.append(block)
                block = [line]
                collecting = True
            elif collecting:
                ends_block = line.strip() == "" or (
                    line[0] not in ("\t", " ") and len(block) > 1)
                if ends_block:
                    blocks.append(block)
                    block = []
                    collecting = False
                else:
                    block.append(line)
        if block:
            blocks.append(block)
        if not blocks:
            return
        print("\nAvailable GPU IDs:")
        print("ID   Numa Node  In Use    Description")
        print("-------------------------------------")
        for block in blocks:
            slot = block[0].split()[0]
            description = block[0].split(":", 2)[2].strip()
            busy = any(("Control:" in line and "I/O+" in line and "BusMaster+" in line)
                       or "Latency:" in line for line in block)
            status = "Yes" if busy else "No"
            print(f"{slot}   {numa_node_of(slot)}   {status:8}  {description}")
        print()
    except subprocess.SubprocessError as err:
        log.warning("Could not list GPU devices: %s", err)


def nvidia_device_ids() -> dict[str, list[str]]:
    """Device ids of NVIDIA GPUs and NVSwitches (``lspci -d 10de: -nn``, run through a shell
    upstream; a missing ``lspci`` therefore shows up as the shell's exit status 127)."""
    found: dict[str, list[str]] = {"gpus": [], "switches": []}
    command = "lspci -d 10de: -nn"
    try:
        try:
            proc = subprocess.run(command.split(), stdout=subprocess.PIPE, text=True, check=False)
        except FileNotFoundError:
            print("/bin/sh: 1: lspci: not found", file=sys.stderr, flush=True)
            raise subprocess.CalledProcessError(127, command) from None
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, command, proc.stdout)
        for line in proc.stdout.strip().split("\n"):
            match = NVIDIA_ID.search(line) if line else None
            if not match:
                continue
            if "3D controller" in line:
                found["gpus"].append(match.group(1))
            elif "Bridge" in line:
                found["switches"].append(match.group(1))
    except subprocess.CalledProcessError as err:
        logging.error("Failed to detect NVIDIA devices: %s", err)
    return found


def write_sysfs(path: str, value: str) -> None:
    """Write one value to a sysfs attribute."""
    with open(path, "w") as out:
        out.write(value)


def tag_one(dev_id: str, kind: str) -> None:
    """Register ``10de:<dev_id>`` with vfio-pci (retrying once after remove_id)."""
    logging.info("Tagging %s (DevID=10de:%s)", kind, dev_id)
    value = f"10de {dev_id}"
    try:
        write_sysfs(VFIO_NEW_ID, value)
    except Exception:
        try:
            try:
                write_sysfs(VFIO_REMOVE_ID, value)
            except Exception:
                pass
            write_sysfs(VFIO_NEW_ID, value)
        except Exception as err:
            logging.error("Failed to tag %s: %s", kind, err)


def tag_vfio() -> None:
    """``dstack tag-vfio``; every failure is only logged, so the exit status is always 0."""
    logging.info("==> Detecting NVIDIA GPUs and NVSwitches")
    try:
        found = nvidia_device_ids()
        if not found["gpus"] and not found["switches"]:
            logging.error("No NVIDIA GPUs or NVSwitches found. Exiting.")
            return
        logging.info("Found %s GPU(s)", len(found['gpus']))
        logging.info("Found %s NVSwitch(es)", len(found['switches']))
        logging.info("==> Loading VFIO modules")
        try:
            subprocess.run(["modprobe", "vfio"], check=True)
            subprocess.run(["modprobe", "vfio_pci"], check=True)
        except subprocess.CalledProcessError as err:
            logging.error("Failed to load VFIO modules: %s", err)
            raise RuntimeError("Failed to load VFIO modules") from err
        logging.info("==> Tagging devices for VFIO passthrough")
        kinds: dict[str, str] = {}
        for dev_id in found["gpus"]:
            kinds.setdefault(dev_id, "GPU")
        for dev_id in found["switches"]:
            kinds.setdefault(dev_id, "NVSwitch")
        for dev_id, kind in kinds.items():
            tag_one(dev_id, kind)
        logging.info("VFIO passthrough setup complete")
    except Exception as err:
        logging.error("Failed to enable VFIO passthrough: %s", err)


def start_host_api(vm_dir: str, kp_port: int) -> tuple[threading.Thread, int]:
    """Start the host API on localhost:<random port> in a daemon thread."""
    config = host_api.ServerConfig(vm_dir=vm_dir, kp_address="127.0.0.1", kp_port=kp_port)
    server, port = host_api.create_http_server(config)
    print(f"Starting HTTP server on localhost:{port}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread, port


# ---------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The v0.5.5 command line."""
    parser = argparse.ArgumentParser(description="DStack VM Management Tool")
    commands = parser.add_subparsers(dest="command", help="Commands")

    new = commands.add_parser("new", help="Setup a new instance")
    new.add_argument("compose_file", type=str, help="Docker compose file")
    new.add_argument("-o", "--dir", type=str, help="Work directory")
    new.add_argument("-i", "--image", type=str, help="VM image path")
    new.add_argument("-c", "--vcpus", type=int, default=1, help="Number of vCPUs")
    new.add_argument("-m", "--memory", type=str, default="2G",
                     help="Memory size (e.g., 1G, 512M)")
    new.add_argument("-d", "--disk", type=str, default="20G", help="Disk size (e.g., 20G)")
    new.add_argument("-g", "--gpu", type=str, action="append", help="GPU device")
    new.add_argument("-p", "--port", action="append", type=str,
                     help="Port mapping in format: protocol[:address]:from:to")
    new.add_argument("--local-key-provider", "--lkp", action="store_true",
                     help="Enable local key provider")
    new.add_argument("--pin-numa", action="store_true", help="Pin vCPUs to NUMA node")
    new.add_argument("--hugepages", action="store_true", help="Enable hugepages")

    run = commands.add_parser("run", help="Start an instance")
    run.add_argument("dir", type=str, help="Work directory")
    run.add_argument("--imgdir", type=str, help="The image directory")
    run.add_argument("--kp-port", type=int, default=3443,
                     help="The key provider listening port")
    run.add_argument("--dry-run", action="store_true", help="Run in dry run mode")

    commands.add_parser("lsgpu", help="List available GPUs")
    commands.add_parser("tag-vfio", help="Tag NVIDIA GPUs and NVSwitches for VFIO passthrough")

    serve = commands.add_parser("serve", help="Run the host server only")
    serve.add_argument("dir", type=str, help="Work directory")
    serve.add_argument("--kp-port", type=int, default=3443,
                       help="The key provider listening port")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.command == "new":
        Instances().create(args)
    elif args.command == "run":
        instances = Instances()
        _server, port = start_host_api(args.dir, args.kp_port)
        instances.start(args.dir, port, imgdir=args.imgdir, dry_run=args.dry_run)
    elif args.command == "lsgpu":
        list_gpus()
    elif args.command == "tag-vfio":
        tag_vfio()
    elif args.command == "serve":
        thread, port = start_host_api(args.dir, args.kp_port)
        write_vm_config(args.dir, port)
        thread.join()
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
