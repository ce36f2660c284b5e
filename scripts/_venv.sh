# shellcheck shell=bash
# scripts/_venv.sh — sourced by scripts/test and scripts/demo from the repo root.
# Creates .venv (python3 -m venv) if missing and installs requirements.txt,
# skipping pip when .venv/.req-sha matches `sha256sum requirements.txt`.

if [ ! -x .venv/bin/python ]; then
    echo "processhub: creating .venv" >&2
    python3 -m venv .venv
fi
_ph_req_sha=$(sha256sum requirements.txt)
if [ "$(cat .venv/.req-sha 2>/dev/null)" != "$_ph_req_sha" ]; then
    echo "processhub: installing requirements.txt into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
    echo "$_ph_req_sha" >.venv/.req-sha
fi
unset _ph_req_sha
