# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One command runner for every external tool a zerog.compute module calls.

Private to the collection (the leading underscore): no stability promise to other collections.

Every call goes through ``AnsibleModule.run_command`` with an argv list (never a shell), with
``LC_ALL=C`` so that the output parsed by the modules is never translated, and under coreutils'
``timeout`` so that a hung tool cannot hang the play. Secrets are passed on stdin (``data``),
never on the command line. A missing binary fails with a message that names the module option
(and so the role variable) that points at it; a failed call fails with what was being done,
why it failed, how to fix it, and the cmd, rc, stdout and stderr.
"""

from __future__ import annotations

import os

TIMEOUT_RC = 124  # coreutils timeout: the command timed out
KILLED_RC = 137  # coreutils timeout --kill-after: it had to be killed


class ToolMissing(Exception):
    """The binary of a tool cannot be found."""


class CommandFailed(Exception):
    """A command ended with an unexpected return code (or timed out)."""

    def __init__(self, message, cmd, rc, stdout, stderr):
        super().__init__(message)
        self.message = message
        self.cmd = cmd
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr

    def details(self):
        """The keys a module returns with a failure."""
        return {"cmd": self.cmd, "rc": self.rc, "stdout": self.stdout, "stderr": self.stderr}


def explain(what, why, fix=None):
    """Build a failure message: what was being done, why it failed, how to fix it."""
    msg = f"{what}: {why}"
    if fix:
        msg += f" Fix: {fix}"
    return msg


class Tool:
    """An external program used by a module.

    :param module: the AnsibleModule.
    :param name: the program's name, looked up on PATH (and ``search_paths``).
    :param path: an explicit path from a module option; when set, no lookup is done.
    :param option: the module option that sets ``path``, named in the message when the
        program is missing (e.g. ``sdk_dir`` or ``lspci_path``).
    :param search_paths: extra directories to look in (sbin directories are always searched).
    :param timeout: default timeout in seconds for each call (0 means none).
    """

    def __init__(self, module, name, path=None, option=None, search_paths=None, timeout=60):
        self.module = module
        self.name = name
        self._path = path
        self.option = option
        self.search_paths = list(search_paths or [])
        self.timeout = timeout
        self._timeout_bin = None

    def available(self):
        """True when the program can be found."""
        try:
            return bool(self.path)
        except ToolMissing:
            return False

    @property
    def path(self):
        """Absolute path of the program; raises ToolMissing with an actionable message."""
        if self._path is None:
            found = self.module.get_bin_path(self.name, required=False, opt_dirs=self.search_paths)
            if not found:
                hint = f" or set the module option {self.option!r} to its path" if self.option else ""
                where = ", ".join(self.search_paths) or "the sbin directories"
                raise ToolMissing(
                    explain(
                        f"Cannot run {self.name}",
                        f"{self.name} was not found on PATH or in {where}.",
                        f"install it{hint}.",
                    )
                )
            self._path = found
        elif not os.path.isabs(self._path):
            raise ToolMissing(f"The path given for {self.name} ({self._path!r}) must be absolute.")
        return self._path

    def argv(self, args, timeout=None):
        """The exact argv run for ``args`` (the timeout wrapper included)."""
        timeout = self.timeout if timeout is None else timeout
        cmd = [self.path] + [str(a) for a in args]
        if timeout:
            if self._timeout_bin is None:
                self._timeout_bin = self.module.get_bin_path("timeout", required=True)
            cmd = [self._timeout_bin, "--kill-after=5", f"{int(timeout)}s", *cmd]
        return cmd

    def run(self, args, what, fix=None, ok_rcs=(0,), timeout=None, data=None, cwd=None, env=None):
        """Run the program and return ``(rc, stdout, stderr)``.

        :param what: what is being done, for the failure message ("Querying CC mode of 18:00.0").
        :param fix: how to fix a failure, for the failure message.
        :param ok_rcs: return codes that are not failures; ``None`` accepts every code.
        :param data: text sent on stdin (the only way secrets reach a command).
        :raises CommandFailed: on an unexpected rc or a timeout.
        """
        cmd = self.argv(args, timeout=timeout)
        environ = {"LC_ALL": "C", "LANG": "C"}
        environ.update(env or {})
        rc, out, err = self.module.run_command(
            cmd, check_rc=False, data=data, binary_data=False, cwd=cwd, environ_update=environ,
        )
        effective_timeout = self.timeout if timeout is None else timeout
        if effective_timeout and rc in (TIMEOUT_RC, KILLED_RC) and (ok_rcs is None or rc not in ok_rcs):
            raise CommandFailed(
                explain(what, f"{self.name} did not finish within {int(effective_timeout)} s.", fix),
                cmd, rc, out, err,
            )
        if ok_rcs is not None and rc not in ok_rcs:
            last = (err or out or "").strip().splitlines()
            reason = last[-1] if last else "no output"
            raise CommandFailed(
                explain(what, f"{self.name} exited with rc {rc} ({reason}).", fix), cmd, rc, out, err,
            )
        return rc, out, err


def fail_command(module, exc, **extra):
    """Fail the module from a CommandFailed or ToolMissing exception."""
    if isinstance(exc, CommandFailed):
        module.fail_json(msg=exc.message, **exc.details(), **extra)
    module.fail_json(msg=str(exc), **extra)
