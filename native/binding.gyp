{
  # auditrelay's native bindings, built by scripts/build-native.mjs (npm install step):
  # - auditrelay_unix (unix.cc): AF_UNIX datagrams for sd_notify and syslog; libc only, built wherever a C++
  #   compiler is installed.
  # - auditrelay_gssapi (gssapi.cc): MIT krb5's GSS-API for transport = krb5; only when the krb5 development files
  #   are present (Debian: libkrb5-dev, which also provides krb5-config). build-native.mjs passes
  #   -Dwith_gssapi=false otherwise, and krb5-config is then never run.
  'variables': {'with_gssapi%': 'true'},
  'targets': [
    {
      'target_name': 'auditrelay_unix',
      'sources': ['unix.cc'],
      'dependencies': ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
      'defines': ['NAPI_VERSION=8'],
      'cflags_cc': ['-std=c++17', '-Wall', '-Wextra'],
      'cflags_cc!': ['-std=gnu++17', '-fno-exceptions'],
    },
  ],
  'conditions': [
    ['with_gssapi=="true"', {
      'targets': [
        {
          'target_name': 'auditrelay_gssapi',
          'sources': ['gssapi.cc'],
          'dependencies': ["<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"],
          'defines': ['NAPI_VERSION=8'],
          'cflags_cc': ['-std=c++17', '-Wall', '-Wextra', '<!@(krb5-config --cflags gssapi)'],
          'cflags_cc!': ['-std=gnu++17', '-fno-exceptions'],
          'libraries': ['<!@(krb5-config --libs gssapi)'],
        },
      ],
    }],
  ],
}
