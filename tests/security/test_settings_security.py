"""Security posture: deploy checks, secrets, DEBUG, hosts, password storage, CSRF, login rate limit."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DATABASE_URL": "postgres://controlplane@127.0.0.1:5432/controlplane",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    "ALLOWED_HOSTS": "controlplane.example.internal",
}


def run_django(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "SECRET_KEY",
            "DJANGO_DEBUG",
            "CONTROLPLANE_DEMO",
            "ALLOWED_HOSTS",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        }
    }
    clean["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    clean["CONTROLPLANE_VAR_DIR"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / "cp-security-var")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True
    )


def test_check_deploy_is_clean_under_production_settings():
    env = {**PRODUCTION_ENV, "SECRET_KEY": secrets.token_urlsafe(50)}
    result = run_django(
        "import django; django.setup(); from django.core.management import call_command; "
        "call_command('check', '--deploy', '--fail-level', 'WARNING')",
        env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_secret_key_is_required_outside_demo():
    result = run_django("import django; django.setup()", PRODUCTION_ENV)
    assert result.returncode != 0 and "SECRET_KEY is required" in result.stderr


def test_debug_off_and_hosts_loopback_by_default():
    code = "import django; django.setup(); from django.conf import settings as s; print(s.DEBUG, s.ALLOWED_HOSTS, s.DEMO_MODE)"
    result = run_django(code, {})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False ['127.0.0.1', 'localhost'] True"
    production = run_django(code, {**PRODUCTION_ENV, "SECRET_KEY": secrets.token_urlsafe(50)})
    assert production.stdout.strip().startswith("False ['controlplane.example.internal'] False")


@pytest.mark.django_db
def test_passwords_are_stored_only_as_django_hashes(make_user):
    from tests.conftest import PASSWORD

    user = make_user("hashcheck")
    assert user.password != PASSWORD and PASSWORD not in user.password
    assert re.match(r"^(pbkdf2_sha256|argon2|bcrypt_sha256|scrypt)\$", user.password)


@pytest.mark.django_db
def test_login_form_requires_csrf(make_user):
    from django.test import Client

    from tests.conftest import PASSWORD

    make_user("csrfuser", "viewer")
    client = Client(enforce_csrf_checks=True)
    response = client.post("/accounts/login/", {"username": "csrfuser", "password": PASSWORD})
    assert response.status_code == 403


@pytest.mark.django_db
def test_login_is_rate_limited(make_user):
    from django.core.cache import cache
    from django.test import Client

    from tests.conftest import PASSWORD

    cache.clear()
    make_user("ratelimited", "viewer")
    client = Client()
    # Different usernames each time (a spray): below the per-username lockout, over the address budget.
    statuses = [
        client.post("/accounts/login/", {"username": f"guess{i}", "password": "wrong"}).status_code
        for i in range(12)
    ]
    assert statuses[:10] == [200] * 10  # the form again, with an error
    assert statuses[10:] == [429, 429]
    # Even the right password is refused until the window passes.
    assert (
        client.post("/accounts/login/", {"username": "ratelimited", "password": PASSWORD}).status_code == 429
    )
    cache.clear()
    assert (
        client.post("/accounts/login/", {"username": "ratelimited", "password": PASSWORD}).status_code == 302
    )


SECRET_PATTERNS = [
    re.compile(r"-----BEGIN (RSA |EC |OPENSSH )?PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"xox[baprs]-[0-9A-Za-z-]{10,}"),
    re.compile(r"ghp_[0-9A-Za-z]{36}"),
    re.compile(r"""SECRET_KEY\s*=\s*["'][^"']{20,}["']"""),
    re.compile(r"postgres(ql)?://[^:/\s]+:[^@\s$]{6,}@(?!db-host)"),
]


def test_no_secrets_in_the_repository():
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".png", ".pt", ".bin", ".sqlite3"}:
            continue
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        offenders += [
            f"{name}: {p.pattern}"
            for p in SECRET_PATTERNS
            if p.search(text) and name != "tests/security/test_settings_security.py"
        ]
    assert not offenders, offenders
