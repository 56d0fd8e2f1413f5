"""The claims ledger: each verdict computed by its rule, bad rows refused with file:line, the committed ledger
reproducible from the committed tables."""

from pathlib import Path

import pytest
import yaml

from repnext.analysis.claims import KINDS, ClaimError, is_timed, judge, ledger, read_claims, verdict_counts

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "data" / "claims_reduced.csv"
HEADER = "id,kind,source,claim,evidence,select,rule,strict,qualification,needs\n"
EVIDENCE = "tests/data/claims_evidence.csv"


def test_each_verdict_follows_from_its_rule():
    table = ledger(read_claims(FIXTURE), ROOT)
    rows = {row["id"]: row for row in table.rows}
    assert {key: row["verdict"] for key, row in rows.items()} == {
        "T-01": "holds", "T-02": "does not hold here", "T-03": "holds with a qualification",
        "T-04": "not testable here", "T-05": "does not hold here",
    }  # fmt: skip
    assert rows["T-02"]["detail"] == "1 of 3 rows fail passed == True: m_large single_branch (passed=false)"
    assert rows["T-03"]["detail"].startswith("the counts match to one decimal only (1 of 2 rows: m_small deploy")
    assert rows["T-04"]["detail"] == "needs an iPhone"
    assert verdict_counts(table.rows) == {"holds": 1, "holds with a qualification": 1, "does not hold here": 2,
                                     "not testable here": 1}  # fmt: skip
    assert [row["id"] for row in table.sorted_rows()] == [f"T-0{i}" for i in range(1, 6)]  # the file's order


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (f"X,speed,s,c,{EVIDENCE},,passed == True,,,", ":2: claim X: kind 'speed' is not one of"),
        (f"X,latency,s,c,{EVIDENCE},,passed == True,,,an iPhone", "give evidence and a rule, or what it needs"),
        ("X,latency,s,c,,,,,,", "give evidence and a rule, or what it needs"),
        (f"X,latency,s,c,{EVIDENCE},,passed == True,passed,,", "a strict rule comes with its qualification"),
        ("X,latency,s,c,tests/data/nowhere.csv,,passed == True,,,", "evidence tests/data/nowhere.csv does not exist"),
        (f"X,latency,s,c,{EVIDENCE},form == 'train',passed == True,,,", "select \"form == 'train'\" finds no row"),
        (f"X,latency,s,c,{EVIDENCE},,params_m + 1,,,", "rule 'params_m + 1' is not true or false for each row"),
        (f"X,latency,s,c,{EVIDENCE},,speed > 1,,,", "rule 'speed > 1':"),
    ],
)
def test_a_bad_claim_fails_with_one_line_naming_its_place(tmp_path, row, message):
    path = tmp_path / "claims.csv"
    path.write_text(HEADER + row + "\n")
    with pytest.raises(ClaimError, match="^" + str(path).replace(".", r"\.")) as error:
        [judge(claim, ROOT) for claim in read_claims(path)]
    assert message in str(error.value) and "\n" not in str(error.value)


def test_repeated_ids_and_wrong_columns_are_refused(tmp_path):
    path = tmp_path / "claims.csv"
    path.write_text(HEADER + "X,latency,s,c,,,,,,a\nX,latency,s,c,,,,,,b\n")
    with pytest.raises(ClaimError, match=r"claims\.csv:3: claim id 'X' is empty or repeated"):
        read_claims(path)
    path.write_text("id,claim\nX,c\n")
    with pytest.raises(ClaimError, match=r"claims\.csv:1: expected the columns id,kind,"):
        read_claims(path)


CLAIMS = read_claims(ROOT / "repnext" / "data" / "claims.csv")


def test_the_committed_claims_cover_every_kind_and_their_evidence_is_a_dependency_of_the_stage():
    assert {claim.kind for claim in CLAIMS} == set(KINDS)
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["claims"]
    assert {claim.evidence for claim in CLAIMS if claim.evidence} <= set(stage["deps"])
    assert {claim.id.split("-")[0] for claim in CLAIMS} == {"RN", "RU", "RC"}  # every seed document


def test_the_committed_ledger_is_its_rules_applied_to_the_committed_tables():
    """The verdicts are never typed: judging the claims again on the tables in the repository gives the file."""
    exact = ledger([claim for claim in CLAIMS if not is_timed(claim)], ROOT)
    assert exact.render("csv") == (ROOT / "artifacts" / "tables" / "claims.csv").read_text()
