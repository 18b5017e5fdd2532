"""Attribute filters and item attributes at the public edge: a bad one is INVALID_ARGUMENT
naming its field, never a crash further in; the client and the CLI build them from plain
values and flags."""

import asyncio

import grpc
import pytest

from recmesh.client import attribute_filter, attribute_filters, flag, in_range, item_proto, where
from recmesh.common import limits
from recmesh.common.errors import InvalidArgument
from recmesh.v1 import common_pb2, recommendations_pb2
from services.gateway import server as gateway_server
from services.gateway.config import GatewaySettings
from services.gateway.validation import check_items, check_recommend

AF, SS, NR, AV = common_pb2.AttributeFilter, common_pb2.StringSet, common_pb2.NumberRange, common_pb2.AttributeValue
NAN, INF = float("nan"), float("inf")


def recommend_with(*attributes) -> recommendations_pb2.RecommendRequest:
    return recommendations_pb2.RecommendRequest(user_id="u", filters=common_pb2.Filters(attributes=attributes))


def test_good_attribute_filters_pass():
    check_recommend(recommend_with(AF(name="brand", any_of=SS(values=["HP", "Canon"])),
                                   AF(name="price", range=NR(min=10, max=10)), AF(name="price", range=NR(max=-1)),
                                   AF(name="in_stock", equals=False, exclude=True),
                                   AF(name="A_" + "z" * (limits.ATTRIBUTE_NAME_CHARS - 2), equals=True)),
                    GatewaySettings())


@pytest.mark.parametrize("attribute, field, problem", [
    (AF(equals=True), "filters.attributes[0].name", "must not be empty"),
    (AF(name="x" * (limits.ATTRIBUTE_NAME_CHARS + 1), equals=True), "filters.attributes[0].name", "longer than 64"),
    (AF(name="brand.name", equals=True), "filters.attributes[0].name", "only A-Z"),
    (AF(name="marque\u0301", equals=True), "filters.attributes[0].name", "only A-Z"),
    (AF(name="brand"), "filters.attributes[0]", "set one test"),
    (AF(name="brand", any_of=SS()), "filters.attributes[0].any_of.values", "at least one value"),
    (AF(name="brand", any_of=SS(values=["HP"] * (limits.FILTER_VALUES + 1))),
     "filters.attributes[0].any_of.values", "at most 1000"),
    (AF(name="brand", any_of=SS(values=["HP", "\u200b"])), "filters.attributes[0].any_of.values[1]", "empty"),
    (AF(name="brand", any_of=SS(values=["x" * (limits.LABEL_CHARS + 1)])),
     "filters.attributes[0].any_of.values[0]", "longer than"),
    (AF(name="price", range=NR()), "filters.attributes[0].range", "set min, max or both"),
    (AF(name="price", range=NR(min=50, max=10)), "filters.attributes[0].range", "min 50.0 is greater than max"),
    (AF(name="price", range=NR(min=NAN)), "filters.attributes[0].range.min", "finite"),
    (AF(name="price", range=NR(min=0, max=INF)), "filters.attributes[0].range.max", "finite"),
])
def test_a_bad_attribute_filter_is_named(attribute, field, problem):
    with pytest.raises(InvalidArgument) as err:
        check_recommend(recommend_with(attribute), GatewaySettings())
    assert err.value.field == field and problem in str(err.value)


def test_attribute_filters_are_bounded_and_indexed():
    with pytest.raises(InvalidArgument, match=f"^filters.attributes: at most {limits.ATTRIBUTE_FILTERS}"):
        check_recommend(recommend_with(*[AF(name="a", equals=True)] * (limits.ATTRIBUTE_FILTERS + 1)),
                        GatewaySettings())
    with pytest.raises(InvalidArgument) as err:
        check_recommend(recommend_with(AF(name="a", equals=True), AF(name="b")), GatewaySettings())
    assert err.value.field == "filters.attributes[1]"
    with pytest.raises(InvalidArgument, match=r"any_of.values: at most 2 values"):  # a setting narrows it
        check_recommend(recommend_with(AF(name="a", any_of=SS(values=["x", "y", "z"]))),
                        GatewaySettings(max_filter_values=2))


def item(**attributes) -> common_pb2.Item:
    return common_pb2.Item(item_id="p", title="Printer", attributes=attributes)


def test_good_item_attributes_pass():
    check_items([item(brand=AV(text="HP"), price=AV(number=-0.5), in_stock=AV(flag=False),
                      **{f"a{i}": AV(flag=True) for i in range(limits.ATTRIBUTES_PER_ITEM - 3)})], GatewaySettings())


@pytest.mark.parametrize("attributes, field, problem", [
    ({"price": AV(number=NAN)}, 'items[3].attributes["price"]', "finite"),
    ({"price": AV(number=-INF)}, 'items[3].attributes["price"]', "finite"),
    ({"price": AV()}, 'items[3].attributes["price"]', "no value set"),
    ({"brand": AV(text=" \u200b ")}, 'items[3].attributes["brand"]', "must not be empty"),
    ({"brand": AV(text="x" * (limits.LABEL_CHARS + 1))}, 'items[3].attributes["brand"]', "longer than"),
    ({"in stock": AV(flag=True)}, 'items[3].attributes["in stock"]', "only A-Z"),
    ({"": AV(flag=True)}, 'items[3].attributes[""]', "must not be empty"),
    ({"\u200bbrand": AV(text="HP")}, 'items[3].attributes["\\u200bbrand"]', "only A-Z"),  # shown escaped
    ({f"a{i}": AV(flag=True) for i in range(limits.ATTRIBUTES_PER_ITEM + 1)}, "items[3].attributes", "at most 64"),
])
def test_a_bad_item_attribute_is_named(attributes, field, problem):
    items = [common_pb2.Item(item_id=f"ok{i}", title="Fine") for i in range(3)] + [item(**attributes)]
    with pytest.raises(InvalidArgument) as err:
        check_items(items, GatewaySettings())
    assert err.value.field == field and problem in str(err.value)


class Context:
    def time_remaining(self):
        return 5.0

    async def abort(self, code, details):
        raise grpc.aio.AbortError(f"{code.name}: {details}")


class NoUpstreams:
    """A gateway whose upstreams must never be called: refused at the door."""

    def __getattr__(self, name):
        raise AssertionError(f"upstream {name} called")


def test_the_gateway_answers_invalid_argument_naming_the_field_and_calls_no_upstream(monkeypatch):
    monkeypatch.setattr(gateway_server.Upstreams, "connect", classmethod(lambda cls, s: NoUpstreams()))
    g = gateway_server.GatewayServicer(GatewaySettings())

    async def calls():
        refused = []
        for call, request in (
            (g.Recommend, recommend_with(AF(name="price", range=NR(min=2, max=1)))),
            (g.UpsertItems, recommendations_pb2.UpsertItemsRequest(items=[item(price=AV(number=NAN))])),
        ):
            with pytest.raises(grpc.aio.AbortError) as err:
                await call(request, Context())
            refused.append(str(err.value))
        return refused

    recommend, upsert = asyncio.run(calls())
    assert recommend.startswith("INVALID_ARGUMENT: filters.attributes[0].range: min 2.0 is greater than max 1.0")
    assert upsert.startswith('INVALID_ARGUMENT: items[0].attributes["price"]: must be a finite number')


# The client's forms.

def test_the_client_reads_each_form_of_attribute_filter():
    mapping = attribute_filters({"brand": ["HP", "Canon"], "maker": "Epson", "price": (10, None), "weight": 2,
                                 "in_stock": True})
    assert mapping == [where("brand", "HP", "Canon"), where("maker", "Epson"), in_range("price", min=10),
                       in_range("weight", 2, 2), flag("in_stock")]
    listed = attribute_filters([flag("in_stock", False), {"name": "brand", "test": ["HP"], "exclude": True}])
    assert listed == [AF(name="in_stock", equals=False), AF(name="brand", any_of=SS(values=["HP"]), exclude=True)]
    assert in_range("price", max=50) == AF(name="price", range=NR(max=50.0))
    assert not in_range("price", max=50).range.HasField("min")
    for bad in ({"brand": None}, {"brand": ["HP", 3]}, {"brand": []}, [{"name": "brand"}], ["brand"]):
        with pytest.raises(ValueError):
            attribute_filters(bad)
    with pytest.raises(ValueError, match="no filter"):
        attribute_filter("price", (1, 2, 3))


def test_the_client_sends_plain_attribute_values_as_typed_ones():
    proto = item_proto({"item_id": "p", "title": "Printer",
                        "attributes": {"brand": "HP", "price": 89, "in_stock": True, "weight": AV(number=2)}})
    assert dict(proto.attributes) == {"brand": AV(text="HP"), "price": AV(number=89.0), "in_stock": AV(flag=True),
                                      "weight": AV(number=2)}
    for bad in (float("nan"), None, [1]):
        with pytest.raises(ValueError):
            item_proto({"item_id": "p", "title": "P", "attributes": {"x": bad}})


# The CLI's flags.

def test_the_cli_turns_its_flags_into_attribute_filters():
    from recmesh.tools.cli import _attribute_filters, build_parser

    args = build_parser().parse_args([
        "recommend", "--user", "u", "--where", "brand=HP,Canon", "--not", "brand=Epson", "--range", "price=10:50",
        "--range", "weight=:2.5", "--not-range", "rating=4:", "--flag", "in_stock=true"])
    assert _attribute_filters(args) == [
        where("brand", "HP", "Canon"), where("brand", "Epson", exclude=True), in_range("price", 10, 50),
        in_range("weight", max=2.5), in_range("rating", min=4, exclude=True), flag("in_stock", True)]
    assert _attribute_filters(build_parser().parse_args(["recommend", "--user", "u"])) == []


@pytest.mark.parametrize("flags", [["--range", "price=10-50"], ["--range", "price=a:b"], ["--flag", "in_stock=yes"],
                                   ["--where", "=HP"], ["--where", "brand"]])
def test_a_malformed_cli_filter_is_a_usage_error(flags, capsys):
    from recmesh.tools.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["recommend", "--user", "u", *flags])
    assert "expected" in capsys.readouterr().err


def test_the_cli_upsert_infers_or_takes_each_attributes_kind():
    from recmesh.tools.cli import build_parser

    args = build_parser().parse_args([
        "upsert", "--item", "p", "--title", "P", "--attr", "brand=HP", "--attr", "price=89.5",
        "--attr", "in_stock=TRUE", "--attr", "model:text=1200", "--attr", "rank:number=3",
        "--attr", "promo:flag=false", "--attr", "size=nan"])
    assert dict(args.attr) == {"brand": "HP", "price": 89.5, "in_stock": True, "model": "1200", "rank": 3.0,
                               "promo": False, "size": "nan"}
    for bad in ("rank:number=x", "promo:flag=1", "x:colour=red"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["upsert", "--item", "p", "--title", "P", "--attr", bad])
