import keyplane.api.client as sdk
import keyplane.client as short


def test_keyplane_client_reexports_exactly_the_sdk_surface() -> None:
    assert sorted(short.__all__) == sorted(sdk.__all__)
    for name in sdk.__all__:
        assert getattr(short, name) is getattr(sdk, name)
