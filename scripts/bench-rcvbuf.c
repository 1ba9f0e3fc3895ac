/* A preload for the DHCP benchmark (scripts/bench-dhcp.sh): every UDP socket the process
 * opens gets a receive buffer of RCVBUF_BYTES (SO_RCVBUFFORCE, so past net.core.rmem_max;
 * the benchmark runs as root), and a later SO_RCVBUF smaller than that is raised to it.
 * plinth sets 4 MiB on its own DHCP socket; this gives perfdhcp, Kea and dnsmasq the same,
 * so that a drop counts a process that fell behind rather than a default buffer of ~200 KiB
 * (some 150 datagrams) that a few milliseconds off the CPU fill. This machine's kernel refuses
 * a per-namespace net.core.rmem_default, hence a preload.
 *   cc -shared -fPIC -O2 -o rcvbuf.so scripts/bench-rcvbuf.c -ldl
 *   RCVBUF_BYTES=4194304 LD_PRELOAD=./rcvbuf.so perfdhcp ... */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>

static int wanted(void) {
  const char *s = getenv("RCVBUF_BYTES");
  return s ? atoi(s) : 4 << 20;
}

static int (*real_setsockopt)(int, int, int, const void *, socklen_t);

static int raw_setsockopt(int fd, int level, int opt, const void *val, socklen_t len) {
  if (!real_setsockopt) real_setsockopt = dlsym(RTLD_NEXT, "setsockopt");
  return real_setsockopt(fd, level, opt, val, len);
}

int socket(int domain, int type, int protocol) {
  static int (*real_socket)(int, int, int);
  if (!real_socket) real_socket = dlsym(RTLD_NEXT, "socket");
  int fd = real_socket(domain, type, protocol);
  int size = wanted();
  if (fd >= 0 && size > 0 && (domain == AF_INET || domain == AF_INET6) && (type & 0xf) == SOCK_DGRAM)
    raw_setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
  return fd;
}

int setsockopt(int fd, int level, int opt, const void *val, socklen_t len) {
  int size = wanted();
  if (level == SOL_SOCKET && (opt == SO_RCVBUF || opt == SO_RCVBUFFORCE) && len == sizeof(int) &&
      size > 0 && *(const int *)val < size)
    return raw_setsockopt(fd, level, SO_RCVBUFFORCE, &size, sizeof size);
  return raw_setsockopt(fd, level, opt, val, len);
}
