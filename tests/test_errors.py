from repnext.errors import one_line


def test_an_exception_becomes_its_type_and_first_non_blank_line():
    assert one_line(ValueError("\n  bad value  \nTraceback details\n")) == "ValueError: bad value"
    assert one_line(KeyError()) == "KeyError" and one_line(RuntimeError("x" * 500), limit=20) == "RuntimeError: xxxxxx"
