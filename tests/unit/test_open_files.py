import resource

from citycard.cli.open_files import processes_for, raise_open_files


def test_processes_for_keeps_each_under_the_limit() -> None:
    assert processes_for(0, 20_000) == 1
    assert processes_for(19_000, 20_000) == 1
    assert processes_for(19_001, 20_000) == 2
    assert processes_for(20_000, 20_000) == 2  # 20,000 terminals need two processes here
    assert processes_for(50_000, 20_000) == 3
    assert processes_for(10, 500, reserved=1_000) == 10  # a tiny limit: one connection each


def test_raise_open_files_reaches_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        now = raise_open_files()
        assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert now == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_lab_fits_its_terminals_under_the_limit(monkeypatch) -> None:
    from argparse import Namespace

    from citycard.cli import loadtest
    from citycard.config.settings import load_settings

    monkeypatch.setattr(loadtest, "raise_open_files", lambda: 20_000)
    settings = load_settings(env={})
    args = Namespace(terminals=20_000, senders=2, target=None)
    fitted = loadtest._fit_open_files(settings, args)
    assert fitted.gateway.processes == 2 and args.senders == 2
    args = Namespace(terminals=50_000, senders=2, target=None)
    assert loadtest._fit_open_files(settings, args).gateway.processes == 3 and args.senders == 3
    args = Namespace(terminals=2_000, senders=2, target=None)
    assert loadtest._fit_open_files(settings, args) is settings  # fits: nothing changes
    args = Namespace(terminals=50_000, senders=2, target="127.0.0.1:7700")
    assert loadtest._fit_open_files(settings, args) is settings and args.senders == 3  # its gateways are not ours
