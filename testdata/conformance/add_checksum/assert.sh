test "$(cat /checked)" = hello
