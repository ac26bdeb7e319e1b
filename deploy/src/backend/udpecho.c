/*
 * shoal-udpecho: answers each UDP datagram with "<hostname> <the datagram>".
 *
 * Usage: shoal-udpecho [PORT]   (default 9000)
 *
 * Ends on SIGTERM or SIGINT (it runs as pid 1 in a container, where default actions do not
 * apply).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 9000;
    if (port <= 0 || port > 65535) {
        fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
        return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);

    /* The reply is built in place: "<hostname> " first, the datagram read right after it. */
    static char buf[256 + 65536];
    if (gethostname(buf, 255) != 0)
        strcpy(buf, "unknown");
    buf[255] = '\0';
    size_t prefix = strlen(buf);
    buf[prefix++] = ' ';

    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("bind");
        return 1;
    }
    printf("echoing on udp port %d\n", port);
    fflush(stdout);
    for (;;) {
        struct sockaddr_in from;
        socklen_t from_len = sizeof from;
        ssize_t n = recvfrom(fd, buf + prefix, sizeof buf - prefix, 0, (struct sockaddr *)&from,
                             &from_len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("recvfrom");
            return 1;
        }
        sendto(fd, buf, prefix + (size_t)n, 0, (struct sockaddr *)&from, from_len);
    }
}
