/*
 * shoal-http: a small, fast HTTP/1.1 server for network benchmarks.
 *
 * Usage: shoal-http [PORT [WORKERS]]   (defaults: 80, one worker per online CPU)
 *
 * Every request (any method and path) is answered with 200 and the body "<hostname>\n".
 * Connections are kept alive unless the request says "Connection: close"; pipelined
 * requests are answered in one write. The listening socket is shared by WORKERS processes,
 * each running its own epoll loop; the workers die with the first process, which ends on
 * SIGTERM or SIGINT (it runs as pid 1 in a container, where default actions do not apply).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 8192
#define MAX_EVENTS 256

struct conn {
    int fd;
    size_t len;
    char in[BUF];
};

static char response[512];
static size_t response_len;
static char response_close[512];
static size_t response_close_len;

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* Write all of buf; 0 on success. Responses are small, so a full socket buffer (which
 * would need EPOLLOUT bookkeeping) only happens to clients that stopped reading: those
 * are dropped. */
static int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Answer every complete request in c->in; returns 0 to keep the connection, -1 to close. */
static int handle(struct conn *c) {
    static char out[BUF * 4];
    size_t out_len = 0;
    size_t start = 0;
    int close_after = 0;
    for (;;) {
        char *head = c->in + start;
        size_t avail = c->len - start;
        char *end = memmem(head, avail, "\r\n\r\n", 4);
        if (end == NULL)
            break;
        size_t req_len = (size_t)(end - head) + 4;
        /* The header block ends with \r\n\r\n, so it can be searched as a string once
         * terminated; the byte after it is saved and put back. */
        char saved = head[req_len - 1];
        head[req_len - 1] = '\0';
        int wants_close = strcasestr(head, "\r\nconnection: close") != NULL;
        head[req_len - 1] = saved;
        const char *r = wants_close ? response_close : response;
        size_t rl = wants_close ? response_close_len : response_len;
        if (out_len + rl > sizeof out) {
            if (write_all(c->fd, out, out_len) != 0)
                return -1;
            out_len = 0;
        }
        memcpy(out + out_len, r, rl);
        out_len += rl;
        start += req_len;
        if (wants_close) {
            close_after = 1;
            break;
        }
    }
    if (out_len > 0 && write_all(c->fd, out, out_len) != 0)
        return -1;
    if (close_after)
        return -1;
    memmove(c->in, c->in + start, c->len - start);
    c->len -= start;
    /* A request that does not fit the buffer is not one we serve. */
    return c->len == sizeof c->in ? -1 : 0;
}

static void serve(int lfd) {
    int ep = epoll_create1(0);
    if (ep < 0) {
        perror("epoll_create1");
        exit(1);
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0) {
        perror("epoll_ctl listen");
        exit(1);
    }
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            exit(1);
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = malloc(sizeof *nc);
                    if (nc == NULL) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    nc->len = 0;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) != 0) {
                        close(fd);
                        free(nc);
                    }
                }
                continue;
            }
            ssize_t r = read(c->fd, c->in + c->len, sizeof c->in - c->len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                close_conn(ep, c);
                continue;
            }
            c->len += (size_t)r;
            if (handle(c) != 0)
                close_conn(ep, c);
        }
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 80;
    long workers = argc > 2 ? atol(argv[2]) : sysconf(_SC_NPROCESSORS_ONLN);
    if (port <= 0 || port > 65535 || workers < 1 || workers > 64) {
        fprintf(stderr, "usage: %s [PORT [WORKERS]]\n", argv[0]);
        return 2;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);

    char host[256] = {0};
    if (gethostname(host, sizeof host - 1) != 0)
        strcpy(host, "unknown");
    const char *fmt = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s\n";
    response_len = (size_t)snprintf(response, sizeof response, fmt, strlen(host) + 1, "", host);
    response_close_len = (size_t)snprintf(response_close, sizeof response_close, fmt,
                                          strlen(host) + 1, "Connection: close\r\n", host);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        perror("bind");
        return 1;
    }
    if (listen(lfd, 4096) != 0) {
        perror("listen");
        return 1;
    }
    pid_t first = getpid();
    for (long i = 1; i < workers; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            break;
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != first)
                _exit(0);
            serve(lfd);
        }
    }
    printf("serving on port %d with %ld workers\n", port, workers);
    fflush(stdout);
    serve(lfd);
    return 0;
}
