#!/usr/bin/env python
"""``dstack`` of nearai/private-ml-sdk, 0.3 era: zerog.compute simulation stand-in.

An independent re-implementation of the observable behaviour of upstream ``dstack.py`` blob
6e4ab47 (PMS 9b851df ... 24265c4, the revision the 0G provider guide was written against): the
same argparse interface (``new``, ``run``, ``lsgpu`` only), files written byte for byte, log
lines, uncaught exceptions, external programs (``sudo`` in front of QEMU when GPUs are given,
``cat`` and ``taskset`` for ``--pin-numa``) and QEMU argv.  Upstream quirks are kept on purpose:
exactly one ``--port`` produces no ``hostfwd``, ``new`` leaves partial directories behind,
``--pin-numa``/``--hugepage`` take any non-empty string as true, and ``run`` blocks until QEMU
exits.  ``scripts/bin/dstack`` is a symlink to this file; ``host_api`` is imported from here.
"""

import argparse
import configparser
import json
import logging
import os
import random
import subprocess
import threading
import uuid
from datetime import datetime
from typing import Any

import host_api

logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(message)s")
log = logging.getLogger(__name__)

PORT_FORMAT_ERROR = "Invalid port mapping format. Use 'protocol[:address]:from:to'"
SIZE_UNITS_MB = {"T": 1024 * 1024, "G": 1024, "M": 1}
PCCS_URL = "https://api.trustedservices.intel.com/sgx/certification/v4"


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


def image_rootfs_hash(image_dir: str) -> str:
    """``rootfs_hash`` from ``<image>/metadata.json`` (a 0.3.x image is required)."""
    metadata_path = os.path.join(image_dir, "metadata.json")
    if not os.path.isfile(metadata_path):
        raise FileNotFoundError(f"Image metadata not found at {metadata_path}")
    try:
        with open(metadata_path) as src:
            metadata = json.load(src)
        rootfs_hash = metadata.get("rootfs_hash")
        if not rootfs_hash:
            raise ValueError("Rootfs hash not found in image info")
        return rootfs_hash
    except json.JSONDecodeError:
        raise ValueError(f"Invalid JSON in metadata file: {metadata_path}")  # noqa: B904


def sysfs_via_cat(path: str) -> str:
    """Read a sysfs file with ``cat`` as upstream does (errors yield an empty string)."""
    return subprocess.run(["cat", path], capture_output=True, text=True, check=False).stdout.strip()


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
            })
            rootfs_hash = image_rootfs_hash(args.image)
            write_json(os.path.join(shared, "config.json"), {
                "rootfs_hash": rootfs_hash,
                "docker_registry": self.config.docker_registry,
                "pccs_url": PCCS_URL,
            })

            memory_mb = size_to_mb(str(args.memory))
            disk_gb = size_to_mb(str(args.disk)) // 1024
            ports = [parse_port(spec) for spec in args.port or []]
            image_path = args.image
            manifest = {
                "id": instance_id,
                "name": "example",
                "vcpu": args.vcpus,
                "gpu": args.gpu or [],
                "memory": memory_mb,
                "disk_size": disk_gb,
                "image": os.path.basename(image_path.rstrip("/")),
                "image_path": image_path,
                "port_map": ports,
                "created_at_ms": int(datetime.now().timestamp() * 1000),
            }
            write_json(os.path.join(work_dir, "vm-manifest.json"), manifest)
            log.info("Work directory prepared successfully at: %s", work_dir)
        except Exception as err:
            log.error("Failed to setup instance: %s", err)
            raise

    def start(self, vm_dir: str, host_port: int, memory: str | None = None,
              vcpus: int | None = None, imgdir: str | None = None,
              pin_numa: bool = False, hugepage: bool = False) -> None:
        """``dstack run``: update config.json, create the disk, run QEMU in the foreground."""
        manifest_path = os.path.join(vm_dir, "vm-manifest.json")
        if not os.path.exists(manifest_path):
            raise ValueError(f"VM manifest not found in {vm_dir}")
        with open(manifest_path) as src:
            manifest = json.load(src)

        image_dir = manifest.get("image_path") or os.path.join(imgdir, manifest["image"])
        metadata_path = os.path.join(image_dir, "metadata.json")

        config_path = os.path.join(vm_dir, "shared", "config.json")
        with open(config_path) as src:
            guest_config = json.load(src)
        guest_config["host_api_url"] = f"http://10.0.2.2:{host_port}/api"
        guest_config["host_vsock_port"] = host_port
        write_json(config_path, guest_config)

        if not os.path.exists(metadata_path):
            raise ValueError(f"Image metadata not found at {metadata_path}")
        with open(metadata_path) as src:
            image = json.load(src)

        mem = memory if memory else f"{manifest['memory']}M"
        vcpu_count = vcpus if vcpus is not None else manifest["vcpu"]
        gpus = manifest.get("gpu", [])
        disk = os.path.join(vm_dir, "hda.img")
        shared = os.path.join(vm_dir, "shared")
        if not os.path.exists(disk):
            subprocess.run(["qemu-img", "create", "-f", "qcow2", disk,
                            f"{manifest['disk_size']}G"], check=True)
        cid = random.randint(1, 10000) + 3

        cmd = [
            self.config.qemu_path,
            "-accel", "kvm",
            "-m", mem,
            "-smp", str(vcpu_count),
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
            "-cdrom", os.path.join(image_dir, image["rootfs"]),
            "-drive", f"file={disk},if=none,id=virtio-disk0",
            "-device", "virtio-blk-pci,drive=virtio-disk0",
            "-virtfs", f"local,path={shared},mount_tag=host-shared,readonly=off,"
                       "security_model=mapped,id=virtfs0",
            "-device", f"vhost-vsock-pci,guest-cid={cid}",
        ]

        forwards = [
            f"hostfwd={fwd.get('protocol', 'tcp')}:{fwd.get('address', '127.0.0.1')}:"
            f"{fwd['from']}-:{fwd['to']}"
            for fwd in manifest.get("port_map", [])
        ]
        # Upstream bug kept on purpose: the forwards are only emitted when there are two or more.
        netdev = "user,id=nic0_td" + ("," + ",".join(forwards) if len(forwards) > 1 else "")
        cmd += ["-device", "virtio-net-pci,netdev=nic0_td", "-netdev", netdev]

        if gpus:
            cmd += ["-device", "pcie-root-port,id=pci.1,bus=pcie.0",
                    "-fw_cfg", "name=opt/ovmf/X-PciMmio64,string=262144"]
            cmd = ["sudo", *cmd]
        for index, slot in enumerate(gpus):
            cmd += ["-object", f"iommufd,id=iommufd{index}",
                    "-device", f"vfio-pci,host={slot},bus=pci.1,iommufd=iommufd{index}"]
        cmd += ["-append", image["cmdline"]]

        if pin_numa and len(gpus) == 1:
            node = sysfs_via_cat(f"/sys/bus/pci/devices/0000:{gpus[0]}/numa_node")
            cpus = sysfs_via_cat(f"/sys/devices/system/node/node{node}/cpulist")
            cmd = ["taskset", "-c", cpus, *cmd]
            if hugepage:
                cmd += [
                    "-numa", f"node,nodeid=0,cpus=0-{vcpu_count - 1},memdev=mem0",
                    "-object", f"memory-backend-file,id=mem0,size={mem},mem-path=/dev/hugepages,"
                               f"share=on,prealloc=yes,host-nodes={node},policy=bind",
                ]

        print(" ".join(cmd))
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as err:
            raise RuntimeError(f"Failed to start VM: {err}")  # noqa: B904 - chained as upstream


# ---------------------------------------------------------------------------------------------
# lsgpu / command line


def list_gpus() -> None:
    """``dstack lsgpu``: every ``lspci`` line that mentions NVIDIA (bridges and audio too)."""
    try:
        listing = subprocess.run(["lspci"], capture_output=True, text=True, check=False)
        lines = [line for line in listing.stdout.split("\n") if "NVIDIA" in line]
        if lines:
            print("\nAvailable GPU IDs:")
            print("ID      Description")
            for line in lines:
                print(line)
            print()
    except subprocess.SubprocessError:
        log.warning("Could not list GPU devices")


def build_parser() -> argparse.ArgumentParser:
    """The 0.3-era command line."""
    parser = argparse.ArgumentParser(description="DStack VM Management Tool")
    commands = parser.add_subparsers(dest="command", help="Commands")

    new = commands.add_parser("new", help="Setup a new instance")
    new.add_argument("compose_file", type=str, help="Docker compose file")
    new.add_argument("-o", "--dir", type=str, help="Work directory")
    new.add_argument("-i", "--image", type=str, help="VM image path")
    new.add_argument("-c", "--vcpus", type=int, default=1, help="Number of vCPUs")
    new.add_argument("-m", "--memory", type=str, default="1G",
                     help="Memory size (e.g., 1G, 512M)")
    new.add_argument("-d", "--disk", type=str, default="20G", help="Disk size (e.g., 20G)")
    new.add_argument("-g", "--gpu", type=str, action="append", help="GPU device")
    new.add_argument("-p", "--port", action="append", type=str,
                     help="Port mapping in format: protocol[:address]:from:to")
    new.add_argument("--local-key-provider", action="store_true",
                     help="Enable local key provider")

    run = commands.add_parser("run", help="Start an instance")
    run.add_argument("dir", type=str, help="Work directory")
    run.add_argument("-m", "--memory", type=str, help="Memory size (e.g. 2G, 512M)")
    run.add_argument("-c", "--vcpus", type=int, help="Number of virtual CPUs")
    run.add_argument("--imgdir", type=str, help="The image directory")
    run.add_argument("--kp-port", type=int, default=3443,
                     help="The key provider listening port")
    run.add_argument("--pin-numa", type=bool, default=False, help="Pin the guest to given NUMA")
    run.add_argument("--hugepage", type=bool, default=False,
                     help="Enable pre-allocate on hugepage. Must also --pin-numa")

    commands.add_parser("lsgpu", help="List available GPUs")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.command == "new":
        Instances().create(args)
    elif args.command == "run":
        instances = Instances()
        config = host_api.ServerConfig(vm_dir=args.dir, kp_address="127.0.0.1",
                                       kp_port=args.kp_port)
        server, port = host_api.create_http_server(config)
        print(f"Starting HTTP server on localhost:{port}")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        instances.start(args.dir, port, memory=args.memory, vcpus=args.vcpus,
                        imgdir=args.imgdir, pin_numa=args.pin_numa, hugepage=args.hugepage)
    elif args.command == "lsgpu":
        list_gpus()
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
