{
  # auditrelay's GSS-API (MIT krb5) binding. Built by scripts/build-native.mjs (npm install step) only when the
  # krb5 development files are present (Debian: libkrb5-dev, which also provides krb5-config).
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
}
