"""Every loader and preset on small files written here."""

import numpy as np
import pandas as pd
import pytest
from conftest import write

from fedseqrec.data.cleaning import clean
from fedseqrec.data.formats import detect_format, load_interactions
from fedseqrec.data.parsing import Origin, parse_timestamps
from fedseqrec.errors import DataError

ATOMIC_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\t10\t5\t100\nu1\t11\t3\t90\nu2\t10\t4\t50\n"
)


def test_recbole_atomic_files_with_features(tmp_path):
    folder = tmp_path / "toy"
    write(folder / "toy.inter", ATOMIC_INTER)
    write(folder / "toy.user", "user_id:token\tage:token\tzip_code:token\nu1\t23\t02139\nu2\t40\t94110\n")
    write(folder / "toy.item", "item_id:token\tclass:token_seq\n10\tAction Drama\n11\tComedy\n")
    log = load_interactions(folder)
    assert log.format == "recbole"
    assert log.events["user"].tolist() == ["u1", "u1", "u2"]
    assert log.events["item"].tolist() == ["10", "11", "10"]
    assert log.events["timestamp"].tolist() == [100.0, 90.0, 50.0]
    assert log.events["rating"].tolist() == [5.0, 3.0, 4.0]
    assert set(log.events["event"]) == {"interaction"}
    assert log.user_features.loc["u1", "zip_code"] == "02139"  # tokens keep leading zeros
    assert log.item_features.loc["10", "class"] == "Action Drama"


def test_recbole_inter_file_given_directly_and_detected(tmp_path):
    inter = write(tmp_path / "x.inter", ATOMIC_INTER)
    assert detect_format(inter) == "recbole"
    assert len(load_interactions(inter)) == 3


def test_movielens_u_data_with_latin1_features(tmp_path):
    folder = tmp_path / "ml-100k"
    write(folder / "u.data", "1\t242\t3\t881250949\n2\t242\t5\t881250950\n1\t302\t4\t881250948\n")
    write(folder / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = ["0"] * 19
    flags[5] = flags[8] = "1"  # Comedy, Drama
    write(
        folder / "u.item",
        "242|Kolya (1996)|24-Jan-1997||http://x|" + "|".join(flags) + "\n"
        "302|L.A. Confidential (1997)|01-Jan-1997||http://y|" + "|".join(["0"] * 16 + ["1", "0", "0"]) + "\n"
        "303|Café Society (1995)|01-Jan-1995||http://z|" + "|".join(["1"] + ["0"] * 18) + "\n",
        encoding="latin-1",
    )
    assert detect_format(folder) == "movielens"
    log = load_interactions(folder)
    assert log.events["user"].tolist() == ["1", "2", "1"]
    assert log.events["rating"].tolist() == [3.0, 5.0, 4.0]
    assert log.user_features.loc["2", "occupation"] == "other"
    assert log.item_features.loc["242", "genre"] == "Comedy Drama"
    assert log.item_features.loc["302", "genre"] == "Thriller"
    assert log.item_features.loc["303", "title"] == "Café Society (1995)"


def test_movielens_ratings_dat(tmp_path):
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    write(folder / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    write(folder / "movies.dat", "1193::One Flew (1975)::Drama\n661::James (1996)::Animation|Children's\n")
    log = load_interactions(folder / "ratings.dat")
    assert log.format == "movielens"
    assert log.events["item"].tolist() == ["1193", "661", "1193"]
    assert log.events["timestamp"].tolist() == [978300760.0, 978302109.0, 978298413.0]
    assert log.user_features.loc["2", "zip_code"] == "70072"
    assert log.item_features.loc["661", "genre"] == "Animation Children's"


def test_generic_csv_with_column_mapping_and_iso_timestamps(tmp_path):
    path = write(
        tmp_path / "log.csv",
        "customer,sku,when,kind,stars\na,p1,2024-03-01T10:00:00Z,click,\na,p2,2024-03-01T12:00:00+02:00,purchase,4\n",
    )
    log = load_interactions(path, "csv", columns="user=customer,item=sku,timestamp=when,event=kind,rating=stars")
    assert log.events["timestamp"].tolist() == [1709287200.0, 1709287200.0]  # 12:00+02:00 == 10:00Z
    assert log.events["event"].tolist() == ["view", "purchase"]  # "click" is a view
    assert np.isnan(log.events["rating"].iloc[0]) and log.events["rating"].iloc[1] == 4.0


def test_generic_tsv_guesses_common_column_names(tmp_path):
    path = write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\tevent_type\tquery\nx\ti\t10\tsearch\tred shoes\n")
    assert detect_format(path) == "tsv"
    log = load_interactions(path)
    assert log.events.iloc[0][["user", "item", "event", "query"]].tolist() == ["x", "i", "search", "red shoes"]


def test_parquet_log(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame({"user": [7, 8], "item": [1, 2], "ts": [1_700_000_000_000, 1_700_000_001_000]}).to_parquet(path)
    log = load_interactions(path, columns="user=user,item=item,timestamp=ts")
    assert log.events["user"].tolist() == ["7", "8"]
    assert log.events["timestamp"].tolist() == [1_700_000_000.0, 1_700_000_001.0]  # milliseconds detected


def test_retailrocket_preset(tmp_path):
    path = write(
        tmp_path / "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,318965,4000\n",
    )
    assert detect_format(path) == "retailrocket"
    assert detect_format(tmp_path) == "retailrocket"
    log = load_interactions(path)
    assert log.events["event"].tolist() == ["view", "cart", "purchase"]
    assert log.events["timestamp"].iloc[0] == pytest.approx(1433221332.117)
    assert log.events["user"].tolist() == ["257597", "992329", "111016"]


def test_retailrocket_preset_on_renamed_file(tmp_path):
    path = write(tmp_path / "rr.csv", "timestamp,visitorid,event,itemid,transactionid\n1433221332117,1,view,2,\n")
    assert detect_format(path) == "retailrocket"
    assert load_interactions(path, "retailrocket").events["item"].tolist() == ["2"]


def test_taobao_preset_headerless(tmp_path):
    path = write(tmp_path / "UserBehavior.csv", "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,buy,1511561733\n")
    assert detect_format(path) == "taobao"
    renamed = write(tmp_path / "tb.csv", path.read_text())
    assert detect_format(renamed) == "taobao"
    log = load_interactions(path)
    assert log.events["event"].tolist() == ["view", "purchase"]
    assert log.events["timestamp"].tolist() == [1511544070.0, 1511561733.0]
    assert log.item_features.loc["2268318", "category"] == "2520377"


def test_timestamp_units():
    origin = Origin("t.csv")
    seconds = parse_timestamps(pd.Series(["1700000000", "1700000100"]), origin, "ts")
    millis = parse_timestamps(pd.Series(["1700000000000", "1700000100000"]), origin, "ts")
    forced = parse_timestamps(pd.Series([1_700_000_000]), origin, "ts", unit="ms")
    iso = parse_timestamps(pd.Series(["2023-11-14 22:13:20"]), origin, "ts")
    assert seconds.tolist() == [1_700_000_000.0, 1_700_000_100.0]
    assert millis.tolist() == seconds.tolist()
    assert forced.tolist() == [1_700_000.0]
    assert iso.tolist() == [1_700_000_000.0]


MIXED = [["1700000000000", "1700000100", "1700000200000"], [1_700_000_000_000, 1_700_000_100]]


@pytest.mark.parametrize("column", MIXED)
def test_a_column_mixing_seconds_and_milliseconds_is_refused_with_the_rows(column):
    with pytest.raises(DataError) as err:
        parse_timestamps(pd.Series(column), Origin("t.csv"), "ts")
    message = str(err.value)
    assert message.startswith("t.csv: line 3: column 'ts': ") and "is epoch seconds, but line 2" in message
    assert "is epoch milliseconds" in message
    forced = parse_timestamps(pd.Series(column), Origin("t.csv"), "ts", unit="ms")  # the user's call, taken
    assert len(forced) == len(column)


def test_missing_value_markers_are_missing_ids_dropped_and_counted(tmp_path):
    path = write(tmp_path / "log.csv", "user,item,timestamp\na,p1,1\nNaN,p2,2\na,NULL,3\nb,p1,4\nb,nan,5\n")
    log = load_interactions(path)
    assert log.events["user"].isna().sum() == 1 and log.events["item"].isna().sum() == 2
    events, report = clean(log)
    assert report.missing_ids == 3 and sorted(events["user"].unique()) == ["a", "b"]
    assert "NaN" not in set(events["user"]) | set(events["item"])


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("user_id,item_id,timestamp\nu1,p1,1700000000\nu1,p2,1700000100\n".encode("utf-8-sig"))
    log = load_interactions(path)
    assert log.events["user"].tolist() == ["u1", "u1"] and log.events["item"].tolist() == ["p1", "p2"]


# --- big logs: read a chunk at a time ---------------------------------------------------------------------------


def _log_lines(n: int) -> str:
    return "".join(f"u{i % 7},p{i % 11},{1_700_000_000 + i},{'buy' if i % 5 == 0 else 'pv'}\n" for i in range(n))


def test_a_log_read_in_chunks_is_the_log_read_whole(tmp_path, monkeypatch):
    from fedseqrec.data import readers

    path = write(tmp_path / "log.csv", "user,item,timestamp,event\n" + _log_lines(1000))
    whole = load_interactions(path)
    monkeypatch.setattr(readers, "CHUNK_ROWS", 64)
    monkeypatch.setattr(readers.iter_delimited, "__defaults__", (True, None, "utf-8", 64))
    chunked = load_interactions(path)
    pd.testing.assert_frame_equal(whole.events, chunked.events)
    assert chunked.events["user"].nunique() == 7 and len(chunked.events) == 1000


def test_item_features_read_in_chunks_keep_each_items_first_row(tmp_path, monkeypatch):
    from fedseqrec.data import readers

    rows = "".join(f"{i % 5},{i % 13},{(i % 13) * 10 + i // 100},pv,{1_511_544_070 + i}\n" for i in range(400))
    path = write(tmp_path / "UserBehavior.csv", rows)
    whole = load_interactions(path)
    monkeypatch.setattr(readers.iter_delimited, "__defaults__", (True, None, "utf-8", 30))
    chunked = load_interactions(path)
    pd.testing.assert_frame_equal(whole.item_features, chunked.item_features)
    assert chunked.item_features.loc["7", "category"] == "70"  # item 7's first row (the later rows say 71…)
    pd.testing.assert_frame_equal(whole.events, chunked.events)


def test_a_bad_value_in_a_later_chunk_names_its_line_and_the_rest_is_not_read(tmp_path, monkeypatch):
    from fedseqrec.data import readers

    monkeypatch.setattr(readers.iter_delimited, "__defaults__", (True, None, "utf-8", 100))
    lines = _log_lines(40_000).splitlines(keepends=True)  # 1 MB: beyond what the reader buffers
    lines[2500] = "u1,p1,yesterday,pv\n"  # data row 2501: line 2502 of the file
    path = tmp_path / "log.csv"
    # Bytes that are not UTF-8 at the end: reading past the bad line would report them instead.
    path.write_bytes(("user,item,timestamp,event\n" + "".join(lines)).encode() + b"u1,\xff\xfe,1,pv\n" * 5000)
    with pytest.raises(DataError, match=r"log.csv: line 2502: column 'timestamp': expected epoch seconds"):
        load_interactions(path)


def test_seconds_and_milliseconds_in_different_chunks_are_refused(tmp_path, monkeypatch):
    from fedseqrec.data import readers

    monkeypatch.setattr(readers.iter_delimited, "__defaults__", (True, None, "utf-8", 100))
    rows = [f"u{i % 3},p{i % 4},{1_700_000_000 + i}\n" for i in range(150)]
    rows += [f"u{i % 3},p{i % 4},{1_700_000_000_000 + i}\n" for i in range(150)]
    path = write(tmp_path / "log.csv", "user,item,timestamp\n" + "".join(rows))
    with pytest.raises(DataError) as err:
        load_interactions(path)
    message = str(err.value)
    assert "line 152: column 'timestamp': '1700000000000' is epoch milliseconds, but line 2" in message


def test_a_bad_sequence_line_stops_the_reading_there(tmp_path):
    path = tmp_path / "Beauty.txt"
    good = "".join(f"{u} {u + 1} {u + 2}\n" for u in range(1, 4))
    after = "".join(f"{u} {u + 1} {u + 2}\n" for u in range(10, 10_000))  # past the UTF-8 check's 64 KiB
    path.write_bytes((good + "9\n" + after).encode() + b"7 \xff\xfe\n" * 100_000)  # line 4 is bad
    with pytest.raises(DataError, match=r"line 4: user '9' has no items"):
        load_interactions(path, "sequences")
    with pytest.raises(DataError, match=r"line 1: expected 2 fields \(user item\), found 3"):
        load_interactions(path, "pairs")
