import json

import pytest
from hypothesis import given, settings, strategies as st

from transforms.rules.enrich import UserAgentParser, campaign_from_url

MAC_CHROME = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.6367.91 Safari/537.36")
IPHONE_SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
                 "Version/17.4 Mobile/15E148 Safari/604.1")
SAMSUNG_CHROME = ("Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/124.0.6367.82 Mobile Safari/537.36")
WINDOWS_FIREFOX = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:125.0) Gecko/20100101 Firefox/125.0"


@pytest.fixture(scope="module")
def parser():
    return UserAgentParser()


# --- campaign_from_url ---------------------------------------------------------------

def test_standard_utm_parameters_map_like_analytics_js():
    url = ("https://example.com/landing?utm_source=newsletter&utm_medium=email&utm_campaign=spring"
           "&utm_term=shoes&utm_content=hero&page=2")
    assert campaign_from_url(url) == {"source": "newsletter", "medium": "email", "name": "spring",
                                      "term": "shoes", "content": "hero"}


def test_other_utm_parameters_keep_their_suffix():
    assert campaign_from_url("https://example.com/?utm_id=42&utm_source_platform=ads") == {
        "id": "42", "source_platform": "ads"}


def test_values_are_percent_decoded_and_plus_is_a_space():
    url = "https://example.com/?utm_campaign=spring%20sale+2024&utm_term=a%2Bb%26c&utm_content=caf%C3%A9"
    assert campaign_from_url(url) == {"name": "spring sale 2024", "term": "a+b&c", "content": "café"}


def test_first_of_repeated_parameters_wins():
    assert campaign_from_url("https://example.com/?utm_source=first&utm_source=second") == {"source": "first"}


def test_prefix_is_case_insensitive_and_keys_are_lower_cased():
    assert campaign_from_url("https://example.com/?UTM_SOURCE=Google&Utm_Medium=CPC") == {
        "source": "Google", "medium": "CPC"}


def test_empty_name_after_prefix_is_skipped():
    assert campaign_from_url("https://example.com/?utm_=x") is None
    assert campaign_from_url("https://example.com/?utm_=x&utm_source=y") == {"source": "y"}


def test_blank_values_are_kept_like_url_search_params():
    assert campaign_from_url("https://example.com/?utm_source=&utm_medium") == {"source": "", "medium": ""}


@pytest.mark.parametrize("url", [
    "https://example.com/products?color=red&size=42",
    "https://example.com/",
    "https://example.com/utm_source/page",        # utm_ in the path, not the query
    "https://example.com/page#utm_source=google",  # utm_ only in the fragment
    "https://example.com/page?ref=x#?utm_source=google",
    "",
])
def test_no_utm_query_parameter_gives_none(url):
    assert campaign_from_url(url) is None


@pytest.mark.parametrize("value", [None, 42, b"https://example.com/?utm_source=x", ["?utm_source=x"],
                                   {"url": "?utm_source=x"}])
def test_non_strings_give_none(value):
    assert campaign_from_url(value) is None


@pytest.mark.parametrize("url", ["http://[::1?utm_source=x", "http://[::1", "https://exa\uff03mple.com/?utm_source=x"])
def test_unparseable_urls_give_none_without_raising(url):
    assert campaign_from_url(url) is None


def test_query_before_fragment_is_used():
    assert campaign_from_url("https://example.com/?utm_source=a#utm_medium=b") == {"source": "a"}


# --- UserAgentParser -----------------------------------------------------------------

def test_desktop_chrome_on_macos(parser):
    assert parser.user_agent_data(MAC_CHROME) == {
        "brands": [{"brand": "Chrome", "version": "124"}],
        "fullVersionList": [{"brand": "Chrome", "version": "124.0.6367.91"}],
        "mobile": False,
        "platform": "macOS",
        "platformVersion": "10.15.7",
        "model": "Mac",
    }


def test_iphone_safari(parser):
    assert parser.user_agent_data(IPHONE_SAFARI) == {
        "brands": [{"brand": "Mobile Safari", "version": "17"}],
        "fullVersionList": [{"brand": "Mobile Safari", "version": "17.4"}],
        "mobile": True,
        "platform": "iOS",
        "platformVersion": "17.4.1",
        "model": "iPhone",
    }


def test_android_chrome_on_a_samsung_phone(parser):
    assert parser.user_agent_data(SAMSUNG_CHROME) == {
        "brands": [{"brand": "Chrome Mobile", "version": "124"}],
        "fullVersionList": [{"brand": "Chrome Mobile", "version": "124.0.6367.82"}],
        "mobile": True,
        "platform": "Android",
        "platformVersion": "14",
        "model": "SM-S918B",
    }


def test_android_tablet_counts_as_mobile(parser):
    # No "Mobile" token (tablet Chrome): the device on a mobile OS decides.
    ua = ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
    data = parser.user_agent_data(ua)
    assert data["mobile"] is True
    assert data["platform"] == "Android"


def test_windows_firefox_has_no_model(parser):
    assert parser.user_agent_data(WINDOWS_FIREFOX) == {
        "brands": [{"brand": "Firefox", "version": "125"}],
        "fullVersionList": [{"brand": "Firefox", "version": "125.0"}],
        "mobile": False,
        "platform": "Windows",
        "platformVersion": "10",
    }


def test_curl_is_a_browser_family_without_platform(parser):
    assert parser.user_agent_data("curl/8.4.0") == {
        "brands": [{"brand": "curl", "version": "8"}],
        "fullVersionList": [{"brand": "curl", "version": "8.4.0"}],
        "mobile": False,
    }


def test_bot_is_not_mobile(parser):
    data = parser.user_agent_data("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
    assert data["brands"] == [{"brand": "Googlebot", "version": "2"}]
    assert data["mobile"] is False
    assert "platform" not in data


def test_os_family_other_is_unknown_and_missing_versions_are_empty(parser):
    # PetalBot's rule names its OS 'Other': no platform. It has no version: brands keep the key.
    data = parser.user_agent_data("Mozilla/5.0 (compatible; PetalBot;+https://webmaster.petalsearch.com/site/petalbot)")
    assert data["brands"] == [{"brand": "PetalBot", "version": ""}]
    assert data["fullVersionList"] == [{"brand": "PetalBot", "version": ""}]
    assert "platform" not in data and "platformVersion" not in data


def test_mobile_token_alone_marks_mobile(parser):
    # Desktop Linux, no device, plain "Firefox" family: only the " Mobile" token says phone.
    data = parser.user_agent_data("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0 Mobile")
    assert data["brands"] == [{"brand": "Firefox", "version": "125"}]
    assert data["mobile"] is True


def test_lone_surrogate_does_not_raise(parser):
    data = parser.user_agent_data(WINDOWS_FIREFOX + " \ud800")
    assert data["platform"] == "Windows"
    json.dumps(data)


@pytest.mark.parametrize("ua", ["", "x", "not a user agent at all", "\x00"])
def test_unrecognised_strings_give_none(parser, ua):
    assert parser.user_agent_data(ua) is None


@pytest.mark.parametrize("ua", [None, 42, b"curl/8.4.0", ["curl/8.4.0"]])
def test_non_strings_give_none_for_user_agents(parser, ua):
    assert parser.user_agent_data(ua) is None


def test_cache_returns_equal_but_distinct_objects():
    parser = UserAgentParser(cache_size=8)
    first = parser.user_agent_data(SAMSUNG_CHROME)
    expected = json.loads(json.dumps(first))
    first["brands"][0]["brand"] = "mutated"
    first["fullVersionList"].append({"brand": "x", "version": "1"})
    first["model"] = "mutated"
    first["extra"] = 1
    second = parser.user_agent_data(SAMSUNG_CHROME)
    assert second == expected
    assert second is not first
    assert second["brands"] is not first["brands"]
    assert second["brands"][0] is not first["brands"][0]


@pytest.mark.parametrize("cache_size", [0, 1, 10_000])
def test_results_do_not_depend_on_the_cache(cache_size):
    parser = UserAgentParser(cache_size=cache_size)
    reference = UserAgentParser(cache_size=0)
    for ua in [MAC_CHROME, IPHONE_SAFARI, MAC_CHROME, SAMSUNG_CHROME, WINDOWS_FIREFOX, IPHONE_SAFARI, "x"] * 2:
        assert parser.user_agent_data(ua) == reference.user_agent_data(ua)


# --- properties ----------------------------------------------------------------------

urlish = st.one_of(
    st.text(),
    st.builds(lambda host, query, fragment: f"https://{host}/p?{query}#{fragment}",
              st.text(max_size=12), st.text(max_size=40).map(lambda t: "utm_" + t), st.text(max_size=12)),
    st.lists(st.tuples(st.sampled_from(["utm_", "UTM_", "utm_source", "utm_campaign", "x", ""]),
                       st.text(max_size=8)), max_size=5)
    .map(lambda pairs: "https://example.com/?" + "&".join(k + "=" + v for k, v in pairs)),
)


@given(urlish)
def test_campaign_from_url_never_raises(url):
    campaign = campaign_from_url(url)
    assert campaign is None or (campaign and all(type(k) is str and k and type(v) is str
                                                 for k, v in campaign.items()))


@settings(max_examples=300)
@given(st.one_of(st.text(), st.text(st.characters(exclude_categories=())), st.builds(lambda a, b: a + MAC_CHROME + b, st.text(max_size=20), st.text(max_size=20))))
def test_user_agent_data_never_raises_and_is_json(parser, ua):
    data = parser.user_agent_data(ua)
    assert data is None or (type(data) is dict and type(data["mobile"]) is bool)
    json.dumps(data)
