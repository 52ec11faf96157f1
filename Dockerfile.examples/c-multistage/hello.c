#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello, %s (static C, built in a multi-stage rbuild)\n", argc > 1 ? argv[1] : "nobody");
    return 0;
}
