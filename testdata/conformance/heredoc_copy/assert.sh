test "$(cat /greeting)" = "hello world" && test "$(cat /literal)" = 'hello ${NAME}' && test "$(/script.sh)" = script
