# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers and checks of an Intel TDX host, for the tdx_host_info module.

Private to the collection (the leading underscore): no stability promise to other collections.

Everything here is pure: functions take the text of a file or of a command's output and return
facts, or take facts and return checks. Files are read through :class:`HostFS`, which prefixes
every path with a root directory and resolves symbolic links inside that root (an absolute link
target such as ``/var/run -> /run`` stays inside it), so the same code reads a live host
(root ``/``) or a copy of one.

A check is a dict ``{name, ok, severity, detail, remediation}``. ``ok`` is True (passed), False
(failed) or None (could not be evaluated, e.g. ``rdmsr`` is not installed); ``severity`` is
``required`` (a failure stops the host), ``recommended`` or ``info``. The names are those of the
summary table of the host-check reference, plus ``pccs_reachable``, ``disk_free`` and ``memory``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat

REQUIRED = "required"
RECOMMENDED = "recommended"
INFO = "info"
SEVERITIES = (REQUIRED, RECOMMENDED, INFO)

GIB = 1024 ** 3


# --------------------------------------------------------------------------------------------
# Files under a root
# --------------------------------------------------------------------------------------------

class HostFS:
    """Read a host's files below ``root``, resolving symbolic links inside ``root``."""

    MAX_LINKS = 40

    def __init__(self, root="/"):
        self.root = os.path.abspath(root or "/")

    def _walk(self, path, follow_last):
        """The real path of ``path`` (absolute, host view) below the root."""
        if self.root == "/":
            return path
        pending = [p for p in path.split("/") if p]
        done = []
        hops = 0
        while pending:
            comp = pending.pop(0)
            if comp == ".":
                continue
            if comp == "..":
                if done:
                    done.pop()
                continue
            candidate = os.path.join(self.root, *done, comp)
            if os.path.islink(candidate) and (pending or follow_last):
                hops += 1
                if hops > self.MAX_LINKS:
                    raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
                target = os.readlink(candidate)
                if target.startswith("/"):
                    done = []
                pending = [p for p in target.split("/") if p] + pending
                continue
            done.append(comp)
        return os.path.join(self.root, *done)

    def path(self, path):
        """Where the host path ``path`` is on this machine (links followed)."""
        return self._walk(path, follow_last=True)

    def read(self, path, default=None):
        """Text content of ``path``, or ``default`` when it cannot be read."""
        try:
            with open(self.path(path), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except (OSError, ValueError):
            return default

    def read_value(self, path, default=None):
        """First line of a sysfs-style file, stripped; ``default`` when unreadable."""
        text = self.read(path)
        if text is None:
            return default
        lines = text.strip().splitlines()
        return lines[0].strip() if lines else ""

    def link_name(self, path):
        """Base name of the target of the symbolic link ``path`` (e.g. a driver), or None."""
        try:
            target = os.readlink(self._walk(path, follow_last=False))
        except OSError:
            return None
        return os.path.basename(target.rstrip("/")) or None

    def listdir(self, path):
        """Sorted entries of a directory, or None when it does not exist."""
        try:
            return sorted(os.listdir(self.path(path)))
        except OSError:
            return None

    def stat(self, path):
        """os.stat of ``path`` (links followed), or None."""
        try:
            return os.stat(self.path(path))
        except OSError:
            return None

    def exists(self, path):
        """True when ``path`` exists (links followed)."""
        return self.stat(path) is not None

    def is_dir(self, path):
        """True when ``path`` is a directory."""
        st = self.stat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def glob_prefix(self, directory, prefix):
        """Entries of ``directory`` whose name starts with ``prefix``."""
        return [e for e in (self.listdir(directory) or []) if e.startswith(prefix)]

    def free_bytes(self, path):
        """(existing path checked, free bytes for an unprivileged user) at ``path`` or its
        nearest existing ancestor; (None, None) when nothing can be measured."""
        current = path
        while True:
            real = self.path(current)
            if os.path.exists(real):
                try:
                    vfs = os.statvfs(real)
                except OSError:
                    return None, None
                return current, vfs.f_bavail * vfs.f_frsize
            if current in ("/", ""):
                return None, None
            current = os.path.dirname(current.rstrip("/")) or "/"


def char_device(st, major=None):
    """Describe a stat result as a device node: dict with is_char, major, minor, mode."""
    if st is None:
        return {"exists": False, "is_char": False, "major": None, "minor": None}
    is_char = stat.S_ISCHR(st.st_mode)
    info = {"exists": True, "is_char": is_char,
            "major": os.major(st.st_rdev) if is_char else None,
            "minor": os.minor(st.st_rdev) if is_char else None}
    if major is not None:
        info["major_ok"] = is_char and info["major"] == major
    return info


# --------------------------------------------------------------------------------------------
# /proc/cpuinfo, /proc/cmdline, kernel release
# --------------------------------------------------------------------------------------------

def parse_cpuinfo(text):
    """Flags and bugs of the first processor of ``/proc/cpuinfo``.

    Only the ``flags`` line counts for feature flags: ``tdx_pw_mce`` is a bug bit on the
    ``bugs`` line and must not be taken for TDX support.
    """
    result = {"flags": [], "bugs": [], "model_name": None, "found": False}
    if not text:
        return result
    for line in text.splitlines():
        if not line.strip():
            if result["found"]:
                break
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "flags":
            result["flags"] = value.split()
            result["found"] = True
        elif key == "bugs":
            result["bugs"] = value.split()
        elif key == "model name" and result["model_name"] is None:
            result["model_name"] = value.strip()
    return result


TRUE_WORDS = ("1", "y", "yes", "on", "true")


def parse_cmdline(text):
    """Kernel command line: the tokens and the settings that matter for TDX."""
    tokens = (text or "").split()
    params = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        # the kernel treats - and _ alike in parameter names
        params[key.replace("-", "_")] = value if sep else None
    kvm_tdx = params.get("kvm_intel.tdx")
    return {
        "text": (text or "").strip(),
        "nohibernate": "nohibernate" in params or params.get("hibernate") == "no",
        "kvm_intel_tdx": None if kvm_tdx is None else kvm_tdx.lower() in TRUE_WORDS,
        "intel_iommu_on": "on" in (params.get("intel_iommu") or "").lower().split(","),
        "iommu_pt": params.get("iommu") == "pt",
    }


_RELEASE_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")


def parse_kernel_release(release):
    """``6.8.0-1028-intel`` -> {release, version: [6, 8, 0], flavour: 'intel'}."""
    release = (release or "").strip()
    match = _RELEASE_RE.match(release)
    if not match:
        return {"release": release or None, "version": None, "flavour": None}
    version = [int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)]
    flavour = release.rsplit("-", 1)[1] if "-" in release else ""
    if flavour.isdigit():
        flavour = ""
    return {"release": release, "version": version, "flavour": flavour}


def read_sysfs_bool(fs, path):
    """A kernel bool parameter file: True (Y), False (N) or None (missing)."""
    value = fs.read_value(path)
    if value is None:
        return None
    return value.upper() in ("Y", "1")


# --------------------------------------------------------------------------------------------
# Kernel log (dmesg or journalctl -k)
# --------------------------------------------------------------------------------------------

_TDX = r"(?:virt/)?tdx: "
KEYID_RE = re.compile(_TDX + r"BIOS enabled: private KeyID range:? \[(\d+), (\d+)\)")
INITIALIZED_RE = re.compile(_TDX + r"(?:TDX-Module|module) initialized")
VERSION1_RE = re.compile(_TDX + r"TDX module: attributes 0x[0-9a-f]+, vendor_id 0x[0-9a-f]+, major_version (\d+), "
                         r"minor_version (\d+), build_date (\d+), build_num (\d+)")
VERSION2_RE = re.compile(_TDX + r"TDX module ([0-9.]+), build number (\d+), build date ([0-9a-z]+)")
PAMT_RE = re.compile(_TDX + r"(\d+) KB allocated for PAMT")
#: lines that mean the TDX module is not usable (host-checks 1.3)
INIT_FAILURE_RES = (
    re.compile(_TDX + r"module not loaded"),
    re.compile(_TDX + r"module initialization failed(?: \((-?\d+)\))?"),
    re.compile(_TDX + r"initialization failed: .*"),
)
#: other error lines worth showing next to a failure
TDX_ERROR_RES = (
    re.compile(_TDX + r"frame pointer \(RBP\) clobber bug present.*"),
    re.compile(_TDX + r"SEAMCALL \(0x[0-9a-f]+\) failed: 0x[0-9a-f]+"),
    re.compile(r"kvm_intel: Failed to initialize TDX module\.?"),
    re.compile(r"tdx: no TDX private KeyIDs available"),
    re.compile(r"TDX not supported by the host platform"),
    re.compile(r"tdx requires kvm\.enable_virt_at_load=1"),
    re.compile(r"MOVDIR64B is required for TDX"),
    re.compile(r"Self-snoop is required for TDX"),
)
TME_ON_RE = re.compile(r"x86/tme: enabled by BIOS")
TME_OFF_RE = re.compile(r"x86/tme: not enabled by BIOS")
SGX_BIOS_OFF_RE = re.compile(r"x86/cpu: SGX disabled by BIOS\.?")
SGX_EPC_RE = re.compile(r"sgx: EPC section (0x[0-9a-f]+-0x[0-9a-f]+)")
DMAR_ON_RE = re.compile(r"DMAR: IOMMU enabled")
BOOT_MARK_RE = re.compile(r"(?:Linux version \S+|Command line: )")
_STAMP_RE = re.compile(r"^(?:<\d>)?\[\s*\d+\.\d+\]\s?")


def _message(line):
    """A kernel log line without its dmesg timestamp."""
    return _STAMP_RE.sub("", line).rstrip()


def parse_kernel_log(text):
    """The TDX, TME, SGX and IOMMU facts of a kernel log (``dmesg`` or ``journalctl -k``).

    Tolerant of both wordings of the kernel (code: ``private KeyID range [a, b)`` and
    ``module initialized``; documentation: ``range: [a, b)`` and ``TDX-Module initialized``) and
    of both module version lines (TDX 1.0 and 2.0 kernels); the version line is optional.
    ``complete`` tells whether the log reaches back to boot (a rotated buffer may have lost the
    TDX lines, which then prove nothing).
    """
    facts = {
        "complete": False, "tdx_lines": [], "keyid_range": None, "module_initialized": False,
        "init_failures": [], "tdx_errors": [], "module_version": None, "pamt_kb": None,
        "tme": None, "sgx_disabled_by_bios": False, "sgx_epc": [], "dmar_enabled": False,
    }
    for raw in (text or "").splitlines():
        line = _message(raw)
        if BOOT_MARK_RE.search(line):
            facts["complete"] = True
        if "tdx" in line.lower():
            facts["tdx_lines"].append(line)
        match = KEYID_RE.search(line)
        if match:
            facts["keyid_range"] = [int(match.group(1)), int(match.group(2))]
        if INITIALIZED_RE.search(line):
            facts["module_initialized"] = True
        for regex in INIT_FAILURE_RES:
            found = regex.search(line)
            if found:
                facts["init_failures"].append(found.group(0))
        for regex in TDX_ERROR_RES:
            found = regex.search(line)
            if found:
                facts["tdx_errors"].append(found.group(0))
        match = VERSION1_RE.search(line)
        if match:
            facts["module_version"] = {"version": f"{match.group(1)}.{match.group(2)}",
                                       "build_date": match.group(3), "build": match.group(4), "format": "tdx1"}
        match = VERSION2_RE.search(line)
        if match:
            facts["module_version"] = {"version": match.group(1), "build": match.group(2),
                                       "build_date": match.group(3), "format": "tdx2"}
        match = PAMT_RE.search(line)
        if match:
            facts["pamt_kb"] = int(match.group(1))
        if TME_OFF_RE.search(line):
            facts["tme"] = False
        elif TME_ON_RE.search(line):
            facts["tme"] = True
        if SGX_BIOS_OFF_RE.search(line):
            facts["sgx_disabled_by_bios"] = True
        match = SGX_EPC_RE.search(line)
        if match:
            facts["sgx_epc"].append(match.group(1))
        if DMAR_ON_RE.search(line):
            facts["dmar_enabled"] = True
    return facts


# --------------------------------------------------------------------------------------------
# MSRs (rdmsr -u)
# --------------------------------------------------------------------------------------------

#: name -> (register, bit field or None, rdmsr arguments). Values are read in unsigned decimal
#: (``-u``): rdmsr's default output is hex without ``0x``, where ``40`` means 64.
MSR_READS = (
    ("tme_activate_enable", 0x982, "1:1"),
    ("seamrr_enable", 0x1401, "11:11"),
    ("tdx_private_keyids", 0x87, "63:32"),
    ("sgx_mcheck_status", 0xA0, None),
    ("pre_production", 0xCE, "27:27"),
    ("sgx_enabled_by_bios", 0x3A, "18:18"),
)


def rdmsr_args(register, field):
    """The rdmsr arguments (without the program) for one read."""
    args = ["-u"]
    if field:
        args += ["-f", field]
    return [*args, f"0x{register:x}"]


def parse_rdmsr(rc, out, err):
    """One rdmsr result: (value or None, reason when None, msr device missing?)."""
    text = (out or "").strip()
    if rc == 0 and re.match(r"^\d+$", text):
        return int(text), None, False
    message = (err or out or "").strip().splitlines()
    reason = message[-1] if message else f"rc {rc}"
    missing_device = "open:" in reason and ("No such file" in reason or "No such device" in reason)
    return None, f"rdmsr: {reason}" if not reason.startswith("rdmsr") else reason, missing_device


# --------------------------------------------------------------------------------------------
# SGX, QCNL, memlock, meminfo, QEMU
# --------------------------------------------------------------------------------------------

def strip_json_comments(text):
    """Remove ``//`` and ``/* */`` comments outside strings (Intel's QCNL file allows them)."""
    out = []
    i = 0
    in_string = False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 2
                continue
            if char == '"':
                in_string = False
            i += 1
            continue
        if char == '"':
            in_string = True
            out.append(char)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end < 0 else end + 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


_URL_RE = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://(?P<host>\[[^\]]+\]|[^/:?#]+)(?::(?P<port>\d+))?")


def parse_url_address(url):
    """(host, port) of an http(s) URL, or (None, None)."""
    match = _URL_RE.match((url or "").strip())
    if not match:
        return None, None
    host = match.group("host").strip("[]")
    port = match.group("port")
    if port:
        return host, int(port)
    return host, {"https": 443, "http": 80}.get(match.group("scheme").lower())


def parse_qcnl(text):
    """``/etc/sgx_default_qcnl.conf``: {present, valid, error, pccs_url, use_secure_cert, address}."""
    if text is None:
        return {"present": False, "valid": False, "error": None, "pccs_url": None, "use_secure_cert": None,
                "pccs_host": None, "pccs_port": None}
    result = {"present": True, "valid": False, "error": None, "pccs_url": None, "use_secure_cert": None,
              "pccs_host": None, "pccs_port": None}
    try:
        data = json.loads(strip_json_comments(text))
    except ValueError as exc:
        result["error"] = f"not valid JSON: {exc}"
        return result
    if not isinstance(data, dict):
        result["error"] = "not a JSON object"
        return result
    result["valid"] = True
    url = data.get("pccs_url")
    result["pccs_url"] = url if isinstance(url, str) and url.strip() else None
    result["use_secure_cert"] = data.get("use_secure_cert")
    result["pccs_host"], result["pccs_port"] = parse_url_address(result["pccs_url"])
    return result


def parse_address(text):
    """``host:port`` / ``[v6]:port`` -> (host, port) or (None, None)."""
    match = re.match(r"^\[?(?P<host>[^\]]+?)\]?:(?P<port>\d+)$", (text or "").strip())
    if not match:
        return None, None
    return match.group("host"), int(match.group("port"))


UNLIMITED_WORDS = ("unlimited", "infinity", "-1")


def parse_limits_memlock(files, user):
    """pam_limits ``memlock`` for ``user`` from [(path, text)] in the order pam reads them.

    Entries naming the user beat wildcard (``*``) entries; later files override earlier ones at
    the same level; ``-`` sets both soft and hard. Group (``@group``) entries are not resolved.
    Returns {soft, hard, source} with values ``unlimited``, a number of KiB, or None.
    """
    found = {"soft": (None, 0, None), "hard": (None, 0, None)}
    for path, text in files:
        for line in (text or "").splitlines():
            line = line.split("#", 1)[0].strip()
            fields = line.split()
            if len(fields) != 4 or fields[2] != "memlock":
                continue
            domain, kind, _item, value = fields
            if domain == user:
                level = 2
            elif domain == "*":
                level = 1
            else:
                continue
            value = "unlimited" if value.lower() in UNLIMITED_WORDS else value
            kinds = ("soft", "hard") if kind == "-" else (kind,)
            for k in kinds:
                if k in found and level >= found[k][1]:
                    found[k] = (value, level, path)
    return {"soft": found["soft"][0], "hard": found["hard"][0],
            "source": found["soft"][2] or found["hard"][2]}


def parse_proc_limits(text):
    """``Max locked memory`` of a ``/proc/<pid>/limits`` file: {soft, hard} (bytes or 'unlimited')."""
    for line in (text or "").splitlines():
        if line.startswith("Max locked memory"):
            fields = line[len("Max locked memory"):].split()
            if len(fields) >= 2:
                return {"soft": fields[0], "hard": fields[1]}
    return None


def parse_meminfo(text):
    """MemTotal and MemAvailable of ``/proc/meminfo`` in bytes (None when absent)."""
    values = {}
    for line in (text or "").splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and fields and fields[0].isdigit():
            factor = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            values[key.strip()] = int(fields[0]) * factor
    return {"mem_total": values.get("MemTotal"), "mem_available": values.get("MemAvailable"),
            "hugepages_total": values.get("HugePages_Total"), "hugepage_size": values.get("Hugepagesize")}


_QEMU_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?(?:\s*\((.*)\))?")


def parse_qemu_version(text):
    """First line of ``qemu-system-x86_64 --version`` -> {text, version, package}."""
    first = (text or "").strip().splitlines()
    line = first[0] if first else ""
    match = _QEMU_RE.search(line)
    if not match:
        return {"text": line or None, "version": None, "package": None}
    return {"text": line, "version": [int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)],
            "package": match.group(4)}


def parse_object_types(text):
    """Object types listed by ``-object help``."""
    types = []
    for line in (text or "").splitlines():
        if line.startswith(" ") and line.strip():
            types.append(line.strip().split()[0])
    return types


def parse_domcapabilities(text):
    """libvirt ``virsh domcapabilities``: {tdx: bool, sectype_tdx: bool}."""
    text = text or ""
    return {"tdx": bool(re.search(r"<tdx\s+supported=['\"]yes['\"]", text)),
            "sectype_tdx": bool(re.search(r"<enum name=['\"]sectype['\"]>(?:(?!</enum>).)*<value>tdx</value>",
                                          text, re.S))}


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------

REMEDIATION = {
    "cpu_tdx_host_flag": "Boot a TDX host kernel (Ubuntu 25.10+ generic, or linux-image-intel on 24.04/25.04), "
                         "enable TDX in the BIOS and add nohibernate to the kernel command line.",
    "tdx_bios_keyids": "In the BIOS enable TME, TME-MT and TDX, set the TME-MT/TDX key split to a non-zero value "
                       "and disable 'Limit CPU Physical Address to 46 bits'.",
    "tdx_module_initialized": "Enable the SEAM Loader in the BIOS, update the BIOS or the TDX module "
                              "(/boot/efi/EFI/TDX/TDX-SEAM.so) and boot with kvm_intel.tdx=1.",
    "kvm_tdx_param": "Add kvm_intel.tdx=1 to the kernel command line and reboot; if it still reads N, look for "
                     "'kvm_intel:' and 'tdx:' errors in the kernel log.",
    "cmdline_nohibernate": "Add nohibernate to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub and reboot.",
    "cmdline_kvm_tdx": "Add kvm_intel.tdx=1 to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub and reboot.",
    "tme_enabled": "Set 'Memory Encryption (TME)' to Enable in the BIOS.",
    "seamrr_enabled": "Set 'Trust Domain Extension (TDX)' and 'TDX Secure Arbitration Mode Loader (SEAM Loader)' "
                      "to Enable in the BIOS.",
    "sgx_mcheck": "Set 'SGX Factory Reset' to Enable in the BIOS and reboot (non-zero status: corrupt SGX UEFI "
                  "variables).",
    "production_platform": "Use production silicon: a pre-production CPU cannot produce production attestation.",
    "kernel_version": "Upgrade to a kernel with KVM TDX: upstream 6.16 or later (6.17+ for NVIDIA CC), Ubuntu "
                      "25.10/26.04, or Canonical's 6.14 -intel kernel (Ubuntu 25.04) for GPU pass-through.",
    "memlock": "Write /etc/security/limits.d/99-tdx-memlock.conf with '* soft memlock unlimited' and "
               "'* hard memlock unlimited' (and the same for the VMM user if it is root).",
    "sgx_devices": "Enable 'SW Guard Extensions (SGX)' in the BIOS (the CPU needs the sgx_lc flag) and cold-boot.",
    "sgx_bios": "Set 'SW Guard Extensions (SGX)' to Enable in the BIOS.",
    "sgx_registration": "Set 'SGX Auto MP Registration' to Enable in the BIOS, or register the platform manually "
                        "with PCKIDRetrievalTool.",
    "qcnl_config": "Install libsgx-dcap-default-qpl and set pccs_url in /etc/sgx_default_qcnl.conf to your PCCS.",
    "aesmd": "Start the AESM service: the local key provider's aesmd container (docker compose up in "
             "key-provider-build) creates /var/run/aesmd/aesm.socket.",
    "pccs_reachable": "Start the PCCS (local PCCS on 127.0.0.1:8081 for the local key provider) or correct "
                      "pccs_url in /etc/sgx_default_qcnl.conf.",
    "iommu_enabled": "Enable VT-d in the BIOS and add intel_iommu=on iommu=pt to the kernel command line.",
    "iommufd": "Boot a kernel with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV, so that /dev/iommu and a "
               "/dev/vfio/devices/vfioN per device on vfio-pci exist (modprobe iommufd).",
    "qemu_tdx": "Install a TDX-enabled QEMU at /usr/bin/qemu-system-x86_64 (the distribution's on Ubuntu 25.10+, "
                "or Canonical's TDX PPA); do not substitute a generic QEMU.",
    "libvirt_tdx": "Only needed for libvirt-managed TDs: install libvirt 11.6 or later (11.10+ recommended).",
    "ovmf_tdvf": "Only needed outside dstack (its image ships its own OVMF): install the TDX build of ovmf.",
    "disk_free": "Free disk space at the listed paths, or point the SDK and VM directories at a larger filesystem.",
    "memory": "Add memory: the CVM and the host need at least the configured amount.",
}


def make_check(name, ok, severity, detail, remediation=None):
    """One check result."""
    return {"name": name, "ok": ok, "severity": severity, "detail": detail,
            "remediation": REMEDIATION.get(name, "") if remediation is None else remediation}


def _gib(value):
    return f"{value / GIB:.1f} GiB"


def check_cpu_flag(cpu):
    if not cpu["found"]:
        return make_check("cpu_tdx_host_flag", None, REQUIRED, "/proc/cpuinfo has no flags line.")
    present = "tdx_host_platform" in cpu["flags"]
    detail = ("tdx_host_platform is on the flags line." if present else
              "tdx_host_platform is not on the flags line of /proc/cpuinfo.")
    if not present and "tdx_pw_mce" in cpu["bugs"]:
        detail += " (tdx_pw_mce on the bugs line is an erratum bit, not TDX support.)"
    return make_check("cpu_tdx_host_flag", present, REQUIRED, detail)


def check_keyids(log, msr):
    """tdx_bios_keyids: the kernel's KeyID line, else MSR 0x87[63:32]."""
    if log is not None and log["keyid_range"]:
        low, high = log["keyid_range"]
        count = high - low
        ok = count >= 2
        detail = f"BIOS enabled private KeyID range [{low}, {high}): {count} TDX private KeyIDs"
        detail += "." if count > 16 or not ok else " (canonical's test wants more than 16)."
        if not ok:
            detail += " At least 2 are needed."
        return make_check("tdx_bios_keyids", ok, REQUIRED, detail)
    keys = msr.get("tdx_private_keyids")
    if keys is not None:
        ok = keys >= 2
        return make_check("tdx_bios_keyids", ok, REQUIRED,
                          f"MSR 0x87[63:32] (IA32_MKTME_KEYID_PARTITIONING) reports {keys} TDX private KeyIDs"
                          + ("." if ok else "; at least 2 are needed."))
    if log is not None and log["complete"]:
        return make_check("tdx_bios_keyids", False, REQUIRED,
                          "The kernel log has no 'virt/tdx: BIOS enabled: private KeyID range' line.")
    return make_check("tdx_bios_keyids", None, REQUIRED, _log_unknown(log, "the KeyID range"))


def _log_unknown(log, what):
    if log is None:
        return f"Not evaluated: the kernel log could not be read, so {what} is unknown."
    return f"Not evaluated: the kernel log does not reach back to boot, so {what} is unknown."


def check_module_initialized(log):
    if log is None:
        return make_check("tdx_module_initialized", None, REQUIRED, _log_unknown(log, "the TDX module state"))
    if log["init_failures"]:
        errors = list(dict.fromkeys(log["init_failures"] + log["tdx_errors"]))
        return make_check("tdx_module_initialized", False, REQUIRED,
                          "The kernel reports: " + "; ".join(errors) + ".")
    if log["module_initialized"]:
        version = log["module_version"]
        detail = "virt/tdx: module initialized"
        if version:
            detail += f" (TDX module {version['version']}, build {version['build']})"
        return make_check("tdx_module_initialized", True, REQUIRED, detail + ".")
    if not log["complete"]:
        return make_check("tdx_module_initialized", None, REQUIRED, _log_unknown(log, "the TDX module state"))
    detail = "The kernel log has no 'virt/tdx: module initialized' line"
    if log["keyid_range"]:
        detail += " although the BIOS enabled TDX KeyIDs (SEAM loader or TDX module missing?)"
    if log["tdx_errors"]:
        detail += "; it reports: " + "; ".join(dict.fromkeys(log["tdx_errors"]))
    return make_check("tdx_module_initialized", False, REQUIRED, detail + ".")


def check_kvm_param(value):
    if value is None:
        return make_check("kvm_tdx_param", False, REQUIRED,
                          "/sys/module/kvm_intel/parameters/tdx does not exist: kvm_intel is not loaded or has no "
                          "TDX support.")
    return make_check("kvm_tdx_param", value, REQUIRED,
                      "/sys/module/kvm_intel/parameters/tdx is " + ("Y." if value else "N: KVM did not enable TDX."))


def check_nohibernate(cmdline, log):
    if cmdline is None:
        return make_check("cmdline_nohibernate", None, REQUIRED, "/proc/cmdline could not be read.")
    if cmdline["nohibernate"]:
        return make_check("cmdline_nohibernate", True, REQUIRED, "nohibernate is on the kernel command line.")
    detail = "nohibernate is not on the kernel command line"
    if log is not None and any("Hibernation support is enabled" in f for f in log["init_failures"]):
        detail += " and the kernel refused TDX: 'initialization failed: Hibernation support is enabled'"
    return make_check("cmdline_nohibernate", False, REQUIRED, detail + ".")


def check_cmdline_kvm(cmdline, kvm_param):
    if cmdline is None:
        return make_check("cmdline_kvm_tdx", None, REQUIRED, "/proc/cmdline could not be read.")
    value = cmdline["kvm_intel_tdx"]
    if value:
        return make_check("cmdline_kvm_tdx", True, REQUIRED, "kvm_intel.tdx=1 is on the kernel command line.")
    if value is False:
        return make_check("cmdline_kvm_tdx", False, REQUIRED, "The kernel command line disables kvm_intel.tdx.")
    return make_check("cmdline_kvm_tdx", False, REQUIRED,
                      "kvm_intel.tdx=1 is not on the kernel command line (upstream KVM and Ubuntu 25.10 default "
                      "it to off" + ("; this kernel enabled it by default, but that does not survive an "
                                     "upgrade)." if kvm_param else ")."))


def check_msr_bit(name, msr, key, want, label, log_fact=None, log_detail=None):
    """A check decided by one MSR value (``want``), else by a kernel log fact, else not evaluated."""
    value = msr.get(key)
    if value is not None:
        ok = value == want
        return make_check(name, ok, REQUIRED, f"{label} = {value}" + ("." if ok else f" (expected {want})."))
    if log_fact is not None:
        return make_check(name, log_fact, REQUIRED, log_detail[log_fact])
    reason = msr.get("_reason") or "rdmsr is not available"
    return make_check(name, None, REQUIRED, f"Not evaluated: {reason}.")


def check_sgx_mcheck(msr):
    value = msr.get("sgx_mcheck_status")
    if value is None:
        return make_check("sgx_mcheck", None, REQUIRED,
                          f"Not evaluated: {msr.get('_reason') or 'rdmsr is not available'}.")
    ok = value == 0
    detail = f"MSR 0xa0 (SGX/MCHECK status) = 0x{value:x}"
    return make_check("sgx_mcheck", ok, REQUIRED, detail + ("." if ok else " (expected 0)."))


def check_kernel(release, gpu_passthrough):
    info = parse_kernel_release(release)
    if info["version"] is None:
        return make_check("kernel_version", None, REQUIRED, "The kernel release could not be read.")
    major_minor = tuple(info["version"][:2])
    rel = info["release"]
    if major_minor >= (6, 16):
        detail = f"Kernel {rel} has upstream KVM TDX (6.16+)"
        if major_minor < (6, 17):
            detail += "; NVIDIA's confidential computing stack is validated on 6.17+"
        return make_check("kernel_version", True, REQUIRED, detail + ".")
    if info["flavour"] == "intel":
        need = (6, 14) if gpu_passthrough else (6, 8)
        if major_minor >= need:
            return make_check("kernel_version", True, REQUIRED,
                              f"Kernel {rel} is a Canonical TDX (-intel) kernel"
                              + (" with GPU pass-through (6.14+)." if gpu_passthrough else "."))
        return make_check("kernel_version", False, REQUIRED,
                          f"Kernel {rel} is a Canonical -intel kernel older than {need[0]}.{need[1]}"
                          + (": TDX GPU pass-through needs the 6.14 -intel kernel or 6.16+." if gpu_passthrough
                             else "."))
    return make_check("kernel_version", False, REQUIRED,
                      f"Kernel {rel} has no KVM TDX support (needs 6.16+ or a Canonical -intel kernel).")


def check_memlock(limits, proc_limits, user):
    """Unlimited memlock for the VMM user, from pam limits files (else the running process)."""
    if limits["soft"] is not None or limits["hard"] is not None:
        ok = limits["soft"] == "unlimited" and limits["hard"] == "unlimited"
        detail = (f"memlock for {user}: soft {limits['soft'] or 'unset'}, hard {limits['hard'] or 'unset'} "
                  f"({limits['source']})")
        return make_check("memlock", ok, REQUIRED, detail + ("." if ok else "; both must be unlimited."))
    if proc_limits is not None:
        ok = proc_limits["soft"] == "unlimited" and proc_limits["hard"] == "unlimited"
        detail = (f"No memlock entry in /etc/security/limits.conf or limits.d; the running process has "
                  f"soft {proc_limits['soft']}, hard {proc_limits['hard']}")
        return make_check("memlock", ok, REQUIRED, detail + ("." if ok else "; both must be unlimited."))
    return make_check("memlock", False, REQUIRED,
                      "No memlock limit is configured in /etc/security/limits.conf or limits.d (the default "
                      "8192 kB is too low for a TD).")


def check_sgx_devices(devices):
    problems = []
    for name in ("sgx_enclave", "sgx_provision"):
        dev = devices[name]
        if not dev["exists"]:
            problems.append(f"/dev/{name} is missing")
        elif not dev["is_char"]:
            problems.append(f"/dev/{name} is not a character device")
        elif dev["major"] != 10:
            problems.append(f"/dev/{name} has major {dev['major']}, not 10")
    if problems:
        return make_check("sgx_devices", False, REQUIRED, "; ".join(problems) + ".")
    return make_check("sgx_devices", True, REQUIRED,
                      "/dev/sgx_enclave (10:{}) and /dev/sgx_provision (10:{}) are character devices.".format(
                          devices["sgx_enclave"]["minor"], devices["sgx_provision"]["minor"]))


def check_sgx_bios(cpu, log, msr):
    problems = []
    missing = [f for f in ("sgx", "sgx_lc") if f not in cpu["flags"]]
    if cpu["found"] and missing:
        problems.append("CPU flags lack " + " and ".join(missing))
    if log is not None and log["sgx_disabled_by_bios"]:
        problems.append("the kernel reports 'x86/cpu: SGX disabled by BIOS.'")
    value = msr.get("sgx_enabled_by_bios")
    if value is not None and value != 1:
        problems.append(f"MSR 0x3a[18] (SGX enable) = {value}")
    if problems:
        return make_check("sgx_bios", False, REQUIRED, "; ".join(problems) + ".")
    if not cpu["found"]:
        return make_check("sgx_bios", None, REQUIRED, "/proc/cpuinfo has no flags line.")
    detail = "CPU flags sgx and sgx_lc present"
    detail += ", MSR 0x3a[18] = 1." if value is not None else " (MSR 0x3a not read)."
    return make_check("sgx_bios", True, REQUIRED, detail)


REGISTRATION_OK_RE = re.compile(r"(?:completed successfully|passed successfully)")


def check_sgx_registration(mpa_output, log_text, efivars):
    """Platform registration: mpa_manage, else its log, else the UEFI status variable."""
    if mpa_output is not None:
        ok = "completed successfully" in mpa_output
        last = mpa_output.strip().splitlines()
        return make_check("sgx_registration", ok, REQUIRED,
                          "mpa_manage -get_registration_status: " + (last[-1] if last else "no output") + ".")
    if log_text is not None:
        ok = bool(REGISTRATION_OK_RE.search(log_text))
        return make_check("sgx_registration", ok, REQUIRED,
                          "/var/log/mpa_registration.log " + ("reports a successful registration." if ok else
                                                              "reports no successful registration."))
    if efivars is not None:
        ok = len(efivars) == 1
        return make_check("sgx_registration", ok, REQUIRED,
                          f"{len(efivars)} SgxRegistrationStatus UEFI variable(s) found" +
                          ("." if ok else " (expected exactly one)."))
    return make_check("sgx_registration", None, REQUIRED,
                      "Not evaluated: no mpa_manage, no /var/log/mpa_registration.log and no EFI variables.")


def check_qcnl(qcnl):
    if not qcnl["present"]:
        return make_check("qcnl_config", False, REQUIRED, "/etc/sgx_default_qcnl.conf does not exist.")
    if not qcnl["valid"]:
        return make_check("qcnl_config", False, REQUIRED, f"/etc/sgx_default_qcnl.conf is {qcnl['error']}.")
    if not qcnl["pccs_url"]:
        return make_check("qcnl_config", False, REQUIRED, "/etc/sgx_default_qcnl.conf sets no pccs_url.")
    return make_check("qcnl_config", True, REQUIRED, f"pccs_url is {qcnl['pccs_url']}.")


def check_aesmd(socket_info):
    if socket_info["is_socket"]:
        return make_check("aesmd", True, INFO, f"{socket_info['path']} is a socket.")
    return make_check("aesmd", False, INFO,
                      "/var/run/aesmd/aesm.socket does not exist yet (the local key provider's aesmd creates it).")


def check_pccs(address, result):
    if address is None:
        return make_check("pccs_reachable", None, REQUIRED,
                          "Not evaluated: no PCCS address (no pccs_url in /etc/sgx_default_qcnl.conf).")
    host, port = address
    where = f"{host}:{port}"
    if result is None:
        return make_check("pccs_reachable", True, REQUIRED, f"TCP connection to the PCCS at {where} succeeded.")
    return make_check("pccs_reachable", False, REQUIRED, f"Cannot connect to the PCCS at {where}: {result}.")


def check_iommu(groups, cmdline, log):
    count = len(groups) if groups is not None else 0
    if count:
        return make_check("iommu_enabled", True, REQUIRED, f"{count} IOMMU groups in /sys/kernel/iommu_groups.")
    detail = "/sys/kernel/iommu_groups is empty or missing"
    if cmdline is not None and not cmdline["intel_iommu_on"]:
        detail += "; intel_iommu=on is not on the kernel command line"
    if log is not None and log["dmar_enabled"]:
        detail += "; the kernel printed 'DMAR: IOMMU enabled'"
    return make_check("iommu_enabled", False, REQUIRED, detail + ".")


BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def vfio_cdevs(fs):
    """{bdf: vfio-dev name or None} for every device bound to vfio-pci."""
    bound = [e for e in fs.listdir("/sys/bus/pci/drivers/vfio-pci") or [] if BDF_RE.match(e)]
    result = {}
    for bdf in bound:
        cdevs = fs.listdir(f"/sys/bus/pci/devices/{bdf}/vfio-dev")
        result[bdf] = cdevs[0] if cdevs else None
    return result


def check_iommufd(dev, cdevs):
    """/dev/iommu, and a vfio-dev character device for every device bound to vfio-pci."""
    problems = []
    if not dev["is_char"]:
        problems.append("/dev/iommu " + ("is not a character device" if dev["exists"] else "does not exist"))
    missing = sorted(bdf for bdf, cdev in cdevs.items() if cdev is None)
    if missing:
        problems.append("no vfio-dev (iommufd) device for " + ", ".join(missing) + " bound to vfio-pci")
    if problems:
        return make_check("iommufd", False, REQUIRED, "; ".join(problems) + ".")
    detail = f"/dev/iommu is a character device ({dev['major']}:{dev['minor']})"
    if cdevs:
        detail += "; every device on vfio-pci has its vfio-dev: " + ", ".join(
            f"{bdf} {cdev}" for bdf, cdev in sorted(cdevs.items()))
    return make_check("iommufd", True, REQUIRED, detail + ".")


def check_qemu(qemu, gpu_passthrough):
    """qemu_tdx: tdx-guest in ``-object help`` and a version that can pass GPUs through to a TD."""
    if qemu.get("error"):
        return make_check("qemu_tdx", False, REQUIRED, qemu["error"])
    version = qemu["version"]
    problems = []
    if not qemu["tdx_guest"]:
        problems.append("'-object help' does not list tdx-guest (a non-TDX QEMU fails with \"Parameter "
                        "'qom-type' does not accept value 'tdx-guest'\")")
    minimum = (9, 2, 1) if gpu_passthrough else (8, 2, 2)
    if version is None:
        problems.append(f"the version line {qemu['text']!r} could not be parsed")
    elif tuple(version) < minimum:
        problems.append("version {} is older than {}{}".format(
            ".".join(map(str, version)), ".".join(map(str, minimum)),
            " (needed for TDX GPU pass-through)" if gpu_passthrough else ""))
    where = qemu["binary"]
    if problems:
        return make_check("qemu_tdx", False, REQUIRED, f"{where}: " + "; ".join(problems) + ".")
    detail = f"{where}: {qemu['text']}, tdx-guest supported"
    if where != "/usr/bin/qemu-system-x86_64":
        detail += " (dstack's documentation expects /usr/bin/qemu-system-x86_64)"
    return make_check("qemu_tdx", True, REQUIRED, detail + ".")


def check_libvirt(caps):
    if caps is None:
        return make_check("libvirt_tdx", None, INFO, "Not evaluated: virsh is not installed (dstack does not use "
                                                     "libvirt).")
    if caps.get("error"):
        return make_check("libvirt_tdx", None, INFO, f"Not evaluated: {caps['error']}")
    ok = caps["tdx"] and caps["sectype_tdx"]
    return make_check("libvirt_tdx", ok, INFO,
                      "virsh domcapabilities " + ("reports TDX launch security." if ok else
                                                  "does not report <tdx supported='yes'/> with sectype tdx."))


OVMF_PATHS = ("/usr/share/ovmf/OVMF.fd", "/usr/share/qemu/OVMF.fd")


def check_ovmf(found):
    if found:
        return make_check("ovmf_tdvf", True, INFO, f"{found} exists.")
    return make_check("ovmf_tdvf", False, INFO,
                      "No OVMF.fd in /usr/share/ovmf or /usr/share/qemu (dstack's image brings its own).")


def check_disk(results):
    if not results:
        return make_check("disk_free", None, REQUIRED, "Not evaluated: no disk requirement given.")
    parts = []
    ok = True
    for item in results:
        if item["free_bytes"] is None:
            parts.append(f"{item['path']}: cannot be measured")
            ok = False
            continue
        enough = item["free_bytes"] >= item["min_free_gib"] * GIB
        ok = ok and enough
        where = item["path"] if item["measured_at"] == item["path"] else f"{item['path']} (on {item['measured_at']})"
        # the amount is given only when it is too small: a passing result stays the same text from
        # run to run (the exact free bytes are in the facts)
        if enough:
            parts.append(f"{where}: at least {item['min_free_gib']:g} GiB free")
        else:
            parts.append(f"{where}: {item['free_bytes'] // GIB} GiB free, {item['min_free_gib']:g} GiB needed")
    return make_check("disk_free", ok, REQUIRED, "; ".join(parts) + ".")


def check_memory(meminfo, min_gib):
    total = meminfo["mem_total"]
    if total is None:
        return make_check("memory", None, REQUIRED, "/proc/meminfo has no MemTotal.")
    ok = total >= min_gib * GIB
    return make_check("memory", ok, REQUIRED,
                      f"MemTotal {_gib(total)}, {min_gib:g} GiB needed" + ("." if ok else "; not enough."))
