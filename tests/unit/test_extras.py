"""A command marked with the extra it needs answers a missing package with a sentence naming that extra."""

import pytest

from musicrl.errors import MissingExtra
from musicrl.extras import needs_extra


@needs_extra("serving")
def _imports_a_package_nobody_installs() -> None:
    import musicrl_test_absent_package  # noqa: F401  # a real import of a distribution that does not exist


@needs_extra("serving")
def _imports_a_missing_module_of_our_own() -> None:
    import musicrl.no_such_module  # noqa: F401


def test_a_missing_third_party_package_names_the_extra_to_install() -> None:
    with pytest.raises(MissingExtra, match=r"'musicrl_test_absent_package'.*install musicrl\[serving\]") as caught:
        _imports_a_package_nobody_installs()
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)  # the original error stays in the chain
    assert MissingExtra.exit_code == 6


def test_a_missing_module_of_our_own_is_a_bug_and_keeps_its_traceback() -> None:
    with pytest.raises(ModuleNotFoundError) as caught:
        _imports_a_missing_module_of_our_own()
    assert not isinstance(caught.value, MissingExtra)


def test_the_mark_keeps_the_command_and_records_its_extra() -> None:
    assert _imports_a_package_nobody_installs.__name__ == "_imports_a_package_nobody_installs"
    assert _imports_a_package_nobody_installs.needs_extra == "serving"  # type: ignore[attr-defined]
