! grep -q eth /links
